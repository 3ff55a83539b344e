"""The GPU benchmark suite's parts; bench/suite.py is its command (bench/README.md).

Each module does one thing, and imports only those above it in this list (processes
names context's Context in annotations only):

    measurements  what is measured and how long: names, shapes, caps, goals, Durations
    window_stats  arithmetic on a worker's windows: rate, steady, CV, shares, common interval
    report        the markdown header and tables, each row with its goal and verdict
    environment   a worker's environment: clean of libvgpu's variables, plus its Slice if hooked
    processes     worker processes: start, ready/go handshake, time limits, kill, result, check
    context       what every step gets: durations, worker command, library, slices, baselines
    steps         the measurement steps (step_*): what each runs, its record, its estimate
    plan          which steps in which order; running them with progress lines
    metadata      what a run records about itself; where the installed libvgpu is
    cli           the command line and main()

Importable as ``gpu_suite`` with bench/ on sys.path (bench/suite.py runs from there, and
the tests put it there).
"""
