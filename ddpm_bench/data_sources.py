"""Names of data sources and what they say about one another: which split of which named data set a
source is, and whether two sources are one distribution (the rule of `gap`, the report's verdict and
`reproduce`). Pure functions on names, a leaf that the outputs and the data package both read."""

from __future__ import annotations

NAMED_SOURCES = ("cifar10", "embedded")  # `NAME:SPLIT` data sources


def source_split(source: str | None) -> str | None:
    """"train" or "test" of a named source (`cifar10:test`), None for files and folders (unknown)."""
    name, sep, split = (source or "").partition(":")
    return split if sep and name in NAMED_SOURCES and split in ("train", "test") else None


def source_data_set(source: str | None) -> str | None:
    """The data set a named source is a split of (`cifar10`), None for files and folders (unknown)."""
    name, sep, _ = (source or "").partition(":")
    return name if sep and name in NAMED_SOURCES else None


def one_distribution(train: str, test: str, same_distribution: bool = False) -> str | None:
    """What makes two data sources one distribution, in words (gap.json's `splits`): two splits of one named
    data set, the user's word (`--same-distribution`), or two files or folders (ddpm-bench cannot tell);
    None: two data sets (two named ones, or a named one and a file), whose difference is no train/test
    gap. The one rule of `gap`, the report's verdict and `reproduce`."""
    sa, sb = source_data_set(train), source_data_set(test)
    if sa == sb and sa is not None:
        return f"two splits of {sa}"
    if same_distribution:
        return f"{train} and {test}, declared one distribution (--same-distribution)"
    if sa is None and sb is None:
        return f"{train} and {test} (files: one distribution as far as ddpm-bench can tell)"
    return None
