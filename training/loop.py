"""One training pass and one evaluation pass: functions of (model, batches, ...) that return metrics.

They know nothing of the run table: the caller hands `log_step` a callable and records what comes back.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm


def train_epoch(model, batches, optimizer, scheduler, *, label_smoothing=0.0, first_step=0, log_every=1,
                log_step=None, progress=None):
    """{'loss', 'accuracy'} of one pass over `batches`, updating `model` at each batch.

    Every `log_every` steps, `log_step(step, mean loss of those steps)` is called; reading the loss only then keeps
    the device from waiting on the host at every step. `progress` is the bar's description, or None for no bar; the
    bar is shown only on a terminal, so logs of batch jobs stay readable.
    """
    model.train()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), device=device)
    window_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, window = 0, 0
    bar = tqdm(batches, desc=progress, leave=False, dynamic_ncols=True, disable=True if progress is None else None)
    for step, (images, labels) in enumerate(bar, start=first_step + 1):
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        loss = loss.detach()
        total_loss += loss * len(labels)
        window_loss += loss
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen, window = seen + len(labels), window + 1
        if window == log_every:
            mean = window_loss.item() / window
            if log_step is not None:
                log_step(step, mean)
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False)
            window_loss.zero_()
            window = 0
    bar.close()
    return {"loss": total_loss.item() / seen, "accuracy": correct.item() / seen}


@torch.no_grad()
def evaluate(model, batches):
    """{'loss', 'accuracy'} of `model` over `batches`: mean cross-entropy (no smoothing) and share of correct labels."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for images, labels in batches:
        logits = model(images)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    return {"loss": total_loss.item() / batches.num_samples, "accuracy": correct.item() / batches.num_samples}
