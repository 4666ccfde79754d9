"""`stepmap dashboard`: a live web view of the runs in a runs location, on every engine.

    model.py    what is shown: runs, counts, rate/ETA, report summary, failures (plain dicts)
    maprun.py   AWS execution and map-run counts, polled gently (DescribeMapRun)
    app.py      the Starlette application: pages, JSON API, the report's chart, safety headers
    server.py   listening (uvicorn), the command line, and `stepmap run --dashboard`

Importing this package imports nothing heavy; the web libraries come with the `dashboard`
extra and load when the command runs.
"""
