"""The figures the original AWS system published, which every engine must reproduce exactly."""

SIZE_1024_DIGITS = 2206
SIZE_1024_HEAD = "167745601878906766"
SIZE_1024_TAIL = "339608429457"
F_1024_DIGITS = 2208
F_1024_HEAD = "238394416015948428"
F_1024_TAIL = "2381486823"


def is_published_total(text: str) -> bool:
    return (isinstance(text, str) and len(text) == SIZE_1024_DIGITS
            and text.startswith(SIZE_1024_HEAD) and text.endswith(SIZE_1024_TAIL))


def sum_of_squares(n: int) -> int:
    """The chaos workload's exact total for items 0..n-1."""
    return (n - 1) * n * (2 * n - 1) // 6
