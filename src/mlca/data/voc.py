"""Pascal VOC XML annotations, in the VOCdevkit layout or as a plain folder.

A VOC split spec is an entry or a list of entries (several years in one split), each one of:

- ``VOC2007/trainval``: ``<root>/VOC2007/ImageSets/Main/trainval.txt`` lists image ids;
  annotations are ``VOC2007/Annotations/<id>.xml``, images ``VOC2007/JPEGImages/<id>.jpg``;
- a path to such an ``ImageSets/Main/<set>.txt`` file;
- a plain folder of ``.xml`` files (or one with an ``Annotations/`` subfolder); each image is
  found by the XML's ``<filename>`` or its stem, beside the XML or in ``JPEGImages/`` or
  ``images/``.

VOC pixel coordinates are 1-based and inclusive (``xmin=1`` is the first pixel column), so
``[xmin, ymin, xmax, ymax]`` becomes the continuous box ``[xmin - 1, ymin - 1, xmax, ymax]``.

``difficult`` objects are kept in the record with ``ignore`` set: training leaves them out,
and evaluation ignores them as the VOC devkit does (a detection of one is neither a hit nor a
false positive, and missing one is no miss). With ``keep_difficult: true`` in the config they
are ordinary objects, learnt and counted. The record's ``image_id`` is the VOC image id (the
XML's stem, e.g. ``"000005"``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np

from .dataset_config import DatasetConfig
from .errors import DataError
from .images import IMAGE_SUFFIXES, probe_image
from .record import Record
from .registry import register_reader
from .scan import ReadReport, check_boxes, collect

__all__ = ["read_voc", "voc_items", "parse_voc_xml", "XmlNode"]


@dataclass
class XmlNode:
    """A minimal XML element that remembers its line, so errors can point at it."""

    tag: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> XmlNode | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [c for c in self.children if c.tag == tag]


def _parse_xml(path: Path) -> XmlNode:
    """Parse with expat (stdlib) to keep line numbers, which ElementTree drops."""
    parser = expat.ParserCreate()
    stack: list[XmlNode] = []
    root: list[XmlNode] = []

    def start(tag, attrs):
        node = XmlNode(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(tag):
        stack[-1].text = stack[-1].text.strip()
        stack.pop()

    def chars(data):
        if stack:
            stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as e:
        raise DataError(path, f"malformed XML: {expat.ErrorString(e.code)} (column {e.offset})", e.lineno) from None
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    return root[0]


@dataclass
class VocItem:
    """One annotation file, with where its image should be."""

    xml: Path
    image_dirs: list[Path]
    image_id: str


def voc_items(root: Path, spec: Any, source: Path | None = None) -> list[VocItem]:
    """Expand a VOC split spec into annotation files (see the module docstring)."""
    items: list[VocItem] = []
    for entry in spec if isinstance(spec, (list, tuple)) else [spec]:
        p = Path(str(entry)).expanduser()
        p = p if p.is_absolute() else root / p
        if p.suffix == ".txt" and p.is_file():
            listing, year = p, p.parents[2]
        elif (p.parent / "ImageSets" / "Main" / f"{p.name}.txt").is_file():
            listing, year = p.parent / "ImageSets" / "Main" / f"{p.name}.txt", p.parent
        elif p.is_dir():
            xml_dir = p / "Annotations" if (p / "Annotations").is_dir() else p
            dirs = [xml_dir, p / "JPEGImages", p / "images", p]
            items += [VocItem(x, dirs, x.stem) for x in sorted(xml_dir.glob("*.xml"))]
            continue
        else:
            raise DataError(
                source or p,
                f"VOC split entry {entry!r}: found neither {p.parent}/ImageSets/Main/{p.name}.txt, "
                f"an ImageSets .txt file, nor a folder of XML files",
            )
        for line in listing.read_text().splitlines():
            fields = line.split()
            # a per-class listing ("000005 -1") names images without the class; skip them
            if fields and not (len(fields) > 1 and fields[1] == "-1"):
                image_id = fields[0]
                items.append(VocItem(year / "Annotations" / f"{image_id}.xml", [year / "JPEGImages"], image_id))
    return items


def _number(node: XmlNode | None, xml: Path, what: str, parent: XmlNode) -> float:
    if node is None or node.text == "":
        raise DataError(xml, f"missing <{what}>", parent.line)
    try:
        return float(node.text)
    except ValueError:
        raise DataError(xml, f"<{what}> is not a number: {node.text!r}", node.line) from None


def _find_image(item: VocItem, filename: str | None) -> Path:
    names = [filename] if filename else []
    names += [item.image_id + s for s in IMAGE_SUFFIXES] + [item.image_id + s.upper() for s in IMAGE_SUFFIXES]
    for d in item.image_dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return item.image_dirs[0] / (filename or f"{item.image_id}.jpg")


def parse_voc_xml(
    item: VocItem, names: list[str], keep_difficult: bool = False
) -> tuple[Record, int]:
    """Parse one VOC XML into a record; ``(record, n_clipped)``. Raises :class:`DataError`."""
    xml = item.xml
    tree = _parse_xml(xml)
    if tree.tag != "annotation":
        raise DataError(xml, f"root element is <{tree.tag}>, expected <annotation>", tree.line)
    fn = tree.find("filename")
    image = _find_image(item, fn.text if fn is not None and fn.text else None)
    width, height = probe_image(image)
    size = tree.find("size")
    if size is not None:
        sw, sh = size.find("width"), size.find("height")
        xw = _number(sw, xml, "width", size) if sw is not None else 0
        xh = _number(sh, xml, "height", size) if sh is not None else 0
        # some tools write 0 when they do not know the size; only a real disagreement is bad
        if xw > 0 and xh > 0 and (int(xw), int(xh)) != (width, height):
            raise DataError(xml, f"<size> says {int(xw)}x{int(xh)} but {image.name} is {width}x{height}", size.line)
    rows, labels, ignore, lines = [], [], [], []
    index = {n: i for i, n in enumerate(names)}
    for obj in tree.findall("object"):
        name = obj.find("name")
        if name is None or not name.text:
            raise DataError(xml, "<object> without a <name>", obj.line)
        if name.text not in index:
            raise DataError(xml, f"class {name.text!r} not in the config's names", name.line)
        diff = obj.find("difficult")
        if diff is not None and diff.text not in ("", "0", "1"):
            raise DataError(xml, f"<difficult> must be 0 or 1, got {diff.text!r}", diff.line)
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(xml, "<object> without a <bndbox>", obj.line)
        x1, y1, x2, y2 = (_number(bb.find(k), xml, k, bb) for k in ("xmin", "ymin", "xmax", "ymax"))
        rows.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(index[name.text])
        ignore.append(diff is not None and diff.text == "1" and not keep_difficult)
        lines.append(bb.line)
    boxes, n_clipped = check_boxes(np.array(rows).reshape(-1, 4), width, height, xml, lines)
    record = Record(image, boxes, np.array(labels, dtype=np.int64), width, height,
                    ignore=np.array(ignore, dtype=bool), image_id=item.image_id)  # fmt: skip
    return record, n_clipped


@register_reader("voc")
def read_voc(config: DatasetConfig, spec: Any, skip_bad: bool = False) -> ReadReport:
    """Read one split of a VOC-format dataset into records."""
    items = voc_items(config.root, spec, config.source)
    if not items:
        raise DataError(config.source, f"no VOC annotations found for split {spec!r} under {config.root}")
    keep = bool(config.options.get("keep_difficult", False))
    from . import cache, images as _images_mod, record as _record_mod, scan as _scan_mod

    where = cache.cache_file(items[0].xml.parent, spec, simple=False) if cache.cache_enabled(config.options) else None
    code = cache.code_hash(sys.modules[__name__], _images_mod, _record_mod, _scan_mod)
    fp = {"reader": "voc", "names": config.names, "keep_difficult": keep, "code": code}
    return cache.cached_collect(
        items, lambda it: parse_voc_xml(it, config.names, keep), skip_bad, where, fp,
        key=lambda it: str(it.xml), deps=lambda it: [it.xml],
    )  # fmt: skip
