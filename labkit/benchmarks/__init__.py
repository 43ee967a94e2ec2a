"""Benchmarks run by ``python -m labkit.bench``: one module a topic, each comparing labkit with PyTorch.

A module here registers functions with :func:`labkit.bench.register`; :func:`labkit.bench.run` imports every
module of this package, so adding a file is all it takes::

    from labkit.bench import compare, register

    @register("topic.thing")
    def thing(device, profile):
        \"\"\"One line saying what is timed (forward, or forward+backward).\"\"\"
        return [compare(labkit_fn, torch_fn, name="topic.thing[n=...]", device=device,
                        warmup=profile.bench_warmup, repeats=profile.bench_repeats, mode="forward")]

Import the modules being measured inside the function, so that listing benchmarks stays cheap.
"""
