"""Pictures people look at instead of tables: side-by-side sheets (input | reconstruction | edits)."""

from __future__ import annotations

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

TILE = 192
LABEL_H = 18


def _tile(image: Image.Image, label: str, tile: int) -> Image.Image:
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    out = Image.new("RGB", (tile, tile + LABEL_H), "white")
    out.paste(image.convert("RGB").resize(size, resample), ((tile - size[0]) // 2, LABEL_H + (tile - size[1]) // 2))
    draw = ImageDraw.Draw(out)
    draw.text((3, 3), label[: tile // 6], fill=(0, 0, 0), font=ImageFont.load_default())
    return out


def side_by_side(images: list[tuple[str, Image.Image]], tile: int = TILE) -> Image.Image:
    """One row of labelled tiles, e.g. [("input", x), ("reconstruction", r), ("blue", e)]."""
    tiles = [_tile(img, label, tile) for label, img in images]
    sheet = Image.new("RGB", (tile * len(tiles), tile + LABEL_H), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * tile, 0))
    return sheet


def contact_sheet(rows: list[tuple[str, list[tuple[str, Image.Image]]]], tile: int = 160) -> Image.Image:
    """Several items, one row each, titled by item id: [(item_id, [(label, image), ...]), ...]."""
    if not rows:
        return Image.new("RGB", (tile, tile), "white")
    width = max(len(imgs) for _, imgs in rows) * tile
    title_h = LABEL_H
    sheet = Image.new("RGB", (width, len(rows) * (tile + LABEL_H + title_h)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for item_id, imgs in rows:
        draw.text((3, y + 3), item_id, fill=(40, 40, 160), font=ImageFont.load_default())
        sheet.paste(side_by_side(imgs, tile), (0, y + title_h))
        y += tile + LABEL_H + title_h
    return sheet


def outline(image: Image.Image, mask: Image.Image, size: int = 384, colour=(255, 0, 200)) -> Image.Image:
    """``image`` (at most ``size`` px) with the border of ``mask``'s white region drawn over it, 2 px wide."""
    scale = min(1.0, size / max(image.size))
    dims = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    out = image.convert("RGB").resize(dims, Image.Resampling.LANCZOS)
    inside = mask.convert("L").resize(dims, Image.Resampling.NEAREST).point(lambda v: 255 if v >= 128 else 0)
    border = ImageChops.subtract(inside.filter(ImageFilter.MaxFilter(3)), inside.filter(ImageFilter.MinFilter(3)))
    out.paste(Image.new("RGB", dims, colour), (0, 0), border)
    return out
