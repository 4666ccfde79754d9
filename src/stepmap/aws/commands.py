"""CLI commands of the AWS engine (placeholder until the AWS engine lands)."""


def register(sub, *, engine_options, output_options) -> None:
    return None
