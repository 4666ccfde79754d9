"""Placeholder: `stepmap report` is being written."""


def register(sub, *, engine_options, output_options) -> None:
    return None
