"""Your own images: a folder of PNG and JPEG files trains, held in memory or streamed with the same numbers, is the same
run wherever it lies, and everything a folder can get wrong is refused before a run is registered."""
import shutil

import pytest
from PIL import Image

import data.decoding
import data.folder
from helpers import assert_refused, make_image_folder, query, run_in_process, tiny_in_process


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images") / "digits", n_train=640)


def folder_run(workdir, root, *args):
    return tiny_in_process(workdir, "--config.data.name=folder", f"--config.data.path={root}", *args)


def test_a_folder_of_png_and_jpeg_files_trains_with_classes_from_its_sub_folders(workdir, images):
    done = folder_run(workdir, images, "--verbose=2")
    assert done.returncode == 0, done.stderr
    assert "512 train / 128 validation / 100 test images of 1x28x28, 10 classes" in done.stdout
    db = workdir / "results" / "resultTable.db"
    results = dict(query(db, "SELECT metric, value FROM Results WHERE run_id=1 AND is_hparam=0"))
    assert results["test_accuracy"] > 0.5  # chance is 0.1
    assert list((workdir / "results" / "data_cache").glob("folder-*-L-28x28.pt"))  # decoded once, kept


def test_colour_is_detected_and_images_of_several_sizes_are_resized_to_image_size(workdir, tmp_path):
    root = make_image_folder(tmp_path / "colour", colour=True, sizes=(32, 20))
    assert_refused(folder_run(workdir, root), "images of different sizes", "32x32", "20x20",
                   "--config.data.image_size=SIDE")
    done = folder_run(workdir, root, "--config.data.image_size=24", "--verbose=2", "--config.data.batch_size=64")
    assert done.returncode == 0, done.stderr
    assert "images of 3x24x24, 10 classes" in done.stdout


def test_the_folder_held_in_memory_and_streamed_gives_the_same_numbers(workdir, images):
    assert folder_run(workdir, images).returncode == 0
    streamed = run_in_process(workdir, "--reproduce=1", "--config.data.memory_limit_mb=0",
                              "--config.data.workers=0")
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    assert "run 1 reproduced: all" in streamed.stdout


def test_the_same_folder_elsewhere_is_the_same_run_and_one_changed_image_is_another(workdir, images, tmp_path,
                                                                                   monkeypatch):
    assert folder_run(workdir, images).returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    assert_refused(folder_run(workdir, copy), "run 1")

    # A refused duplicate of a scanned folder reads the scan from beside the table: no image is read again.
    monkeypatch.setattr(data.folder.FOLDER, "_scans", {})
    monkeypatch.setattr(data.folder, "_measure", lambda path, budget: pytest.fail(f"{path} was read again"))
    assert_refused(folder_run(workdir, images), "run 1")
    monkeypatch.undo()

    first = sorted((copy / "train" / "digit3").iterdir())[0]
    Image.open(first).rotate(90).save(first)
    changed = folder_run(workdir, copy)
    assert changed.returncode == 0, changed.stderr
    fingerprints = query(workdir / "results" / "resultTable.db",
                         "SELECT run_id, data_fingerprint FROM TemplateLaunch ORDER BY run_id")
    assert [run for run, _ in fingerprints] == [1, 2] and fingerprints[0][1] != fingerprints[1][1]


def broken(root, case):
    """A copy of the image folder at `root` with one thing wrong; returns (folder, what the refusal says)."""
    if case == "no test folder":
        shutil.rmtree(root / "test")
        return root, "has no test/ folder"
    if case == "no train folder":
        shutil.rmtree(root / "train")
        return root, "has no train/ folder"
    if case == "empty class":
        (root / "train" / "digit9b").mkdir()
        (root / "test" / "digit9b").mkdir()
        return root, f"class folder {root / 'train' / 'digit9b'} holds no images"
    if case == "classes differ":
        shutil.rmtree(root / "test" / "digit4")
        return root, "different classes: 'digit4' is only in train/"
    if case == "undecodable file":
        bad = root / "test" / "digit2" / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return root, f"cannot decode {bad}"
    if case == "a truncated jpeg":
        first = sorted((root / "train" / "digit1").glob("*.jpg"))[0]
        first.write_bytes(first.read_bytes()[:60])
        return root, f"cannot decode {first}"
    raise ValueError(case)


@pytest.mark.fault("image folders")
@pytest.mark.parametrize("case", ["no test folder", "no train folder", "empty class", "classes differ",
                                  "undecodable file", "a truncated jpeg"])
def test_what_a_folder_gets_wrong_is_refused_in_one_line_with_no_row_and_no_folder(workdir, images, tmp_path, case):
    root, message = broken(shutil.copytree(images, tmp_path / "broken"), case)
    assert_refused(folder_run(workdir, root), message)
    assert not (workdir / "results").exists()


def test_a_missing_folder_and_a_wrong_image_size_are_refused(workdir, images, tmp_path):
    assert_refused(folder_run(workdir, tmp_path / "nowhere"), "does not exist")
    assert_refused(folder_run(workdir, images, "--config.data.image_size=[28]"), "data.image_size is a side")
    assert_refused(folder_run(workdir, images, "--config.data.workers=-1"), "'data.workers' must be an integer >= 0")
    assert not (workdir / "results").exists()


@pytest.mark.slow  # five trainings in process: the full suite's share
def test_seeds_compare_verify_and_sweep_work_on_a_streamed_folder(workdir, images):
    streamed = ("--config.data.memory_limit_mb=0", "--config.data.workers=0")
    seeds = folder_run(workdir, images, *streamed, "--seeds=2")
    assert seeds.returncode == 0, seeds.stderr
    swept = folder_run(workdir, images, *streamed, "--sweep", "--config.training.learning_rate=0.015,0.01")
    assert swept.returncode == 0, swept.stderr
    assert "already finished" in swept.stdout or swept.stdout.count("finished") >= 2
    assert query(workdir / "results" / "resultTable.db", "SELECT COUNT(*) FROM Experiments") == [(3,)]
    compared = run_in_process(workdir, "--compare", "--format=json")
    assert compared.returncode == 0, compared.stderr
    assert '"runs": [\n      1,\n      2\n    ]' in compared.stdout
    verified = run_in_process(workdir, "--verify", "1", "3")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "all 2 replayed runs match their record" in verified.stdout


@pytest.mark.fault("image folders")
@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True])
def test_links_that_lead_nowhere_or_to_a_special_file_are_one_line_naming_the_file(workdir, images, tmp_path,
                                                                                   streamed):
    where = ("--config.data.memory_limit_mb=0",) if streamed else ()
    for name, make in (("dangling.png", lambda path: path.symlink_to(tmp_path / "gone.png")),
                       ("loop.png", lambda path: path.symlink_to(path)),
                       ("memory.png", lambda path: path.symlink_to("/proc/self/mem"))):
        root = tmp_path / name / "digits"
        shutil.copytree(images, root)
        make(root / "train" / "digit3" / name)
        assert_refused(folder_run(workdir, root, *where), f"cannot read image file {root / 'train' / 'digit3' / name}",
                       "remove or replace it")
    assert not (workdir / "results" / "resultTable.db").exists()


@pytest.mark.fault("image folders")
def test_an_image_whose_pixels_outgrow_the_memory_limit_is_refused_before_it_is_decoded(workdir, images, tmp_path,
                                                                                        monkeypatch):
    root = tmp_path / "bomb" / "digits"
    shutil.copytree(images, root)
    Image.new("L", (4200, 4200)).save(root / "train" / "digit3" / "huge.png")  # 70 KB on disk, 17.6 million pixels
    decoded = []
    real = data.decoding.eight_bit
    monkeypatch.setattr(data.decoding, "eight_bit", lambda image: decoded.append(image.size) or real(image))
    assert_refused(folder_run(workdir, root, "--config.data.memory_limit_mb=64"), "huge.png",
                   "4200x4200 pixels would take 67 MiB decoded, more than the 64 MiB one image may take",
                   "it was not decoded")
    assert (4200, 4200) not in decoded
    assert not (workdir / "results" / "resultTable.db").exists()


@pytest.mark.fault("image folders")
def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    import numpy as np

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in data.decoding.SIXTEEN_BIT_MODES
    pixels = data.decoding.decode(path, "L", None)[0]
    assert np.array_equal(pixels, (ramp >> 8).astype(np.uint8))  # every level kept, none saturated
    measured = data.folder._measure(path, budget=2**30)
    assert measured["sums"][0] == float((ramp >> 8).sum()) and measured["grey"]


@pytest.mark.fault("image folders")
def test_a_scan_cache_measured_before_16_bit_images_were_scaled_is_measured_again(tmp_path, images):
    import json

    import numpy as np

    root = shutil.copytree(images, tmp_path / "deep")
    [first] = sorted((root / "train").glob("*/*.png"))[:1]
    ramp = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 80).astype(np.uint16)
    Image.fromarray(ramp).save(first)
    cfg, cache = {"path": str(root), "memory_limit_mb": 4096}, tmp_path / "results"
    cache.mkdir()
    scaled = data.folder.ImageFolder().scan(cfg, cache)["sums"]
    # The caches as the template wrote them when it clipped 16-bit images: no mark, the image's sums saturated.
    [summary] = cache.glob("data_folder_*[0-9a-f].json")
    files = json.loads(summary.with_suffix(".files.json").read_text())["files"]
    key = next(key for key in files if key.startswith(str(first.relative_to(root))))
    clipped = float(np.minimum(ramp, 255).sum())
    old_sums = [scaled[0] - files[key]["sums"][0] + clipped]
    files[key]["sums"] = [clipped]
    summary.with_suffix(".files.json").write_text(json.dumps(files))
    old = json.loads(summary.read_text())
    old.pop("measured")
    old["scan"]["sums"] = old_sums
    summary.write_text(json.dumps(old))
    assert data.folder.ImageFolder().scan(cfg, cache)["sums"] == scaled  # measured again, as the images now read
    assert json.loads(summary.read_text())["measured"] == data.folder.MEASURED


@pytest.mark.fault("image folders")
@pytest.mark.slow
def test_a_decoded_copy_edited_by_hand_is_decoded_again_never_trained_on(workdir, images):
    import torch

    assert folder_run(workdir, images).returncode == 0
    [cache] = (workdir / "results" / "data_cache").glob("folder-*.pt")
    original = torch.load(cache, weights_only=True)
    edits = {"every label set to 0": lambda t: {**t, "train": (t["train"][0], torch.zeros_like(t["train"][1]))},
             "one pixel changed": lambda t: {**t, "test": (t["test"][0].clone().index_put_(
                 (torch.tensor([0]),), torch.tensor(255, dtype=torch.uint8)), t["test"][1])}}
    for what, edit in edits.items():
        torch.save(edit(original), cache)
        again = run_in_process(workdir, "--reproduce=1", "--verbose=0")
        assert again.returncode == 0 and "run 1 reproduced: all" in again.stdout, (what, again.stdout)
        assert "does not hold what it claims" in again.stderr, what
        restored = torch.load(cache, weights_only=True)
        assert restored["sha256"] == original["sha256"], what  # decoded again, and kept as it should be
