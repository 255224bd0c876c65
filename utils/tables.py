"""The one way the template prints a table (--compare, --reproduce, a sweep's summary): aligned text or Markdown."""


def table_lines(rows, *, indent="", markdown=False) -> list:
    """The lines of a table whose first row is its header: each column as wide as its widest cell, or Markdown."""
    rows = [[str(cell) for cell in row] for row in rows]
    if markdown:
        header, *body = rows
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(row) + " |" for row in body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip() for row in rows]
