"""`stepmap selftest`: one command that proves an engine end to end.

    checks.py    a timed check: passed / failed / skipped, with its estimated AWS cost
    sequence.py  the checks: s3keys size 64, chaos run + resume, totals against local, reports
    stacks.py    the stacks a real-AWS selftest deploys, and destroys in a finally
    jobs.py      the runs, through stepmap.runner and stepmap.report (as the CLI makes them)
    session.py   one selftest from start to end
    command.py   the command line

``--engine aws-emulated`` runs the same sequence offline (and is part of the test suite);
``--engine aws`` adds deploying and destroying real stacks (see docs/aws.md).
"""
