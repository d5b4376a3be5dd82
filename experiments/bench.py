"""Speed of MF-IPS training: the shared trainer against a plain PyTorch loop.

What it measures. Training throughput (ratings per second) of matrix
factorisation with biases on the IPS objective (:func:`estimators.objectives.ips`),
through the very program :func:`estimators.train.fit` runs (one compiled
epoch, ``lax.scan`` over minibatches), once with the row-sparse lazy Adam and
once with optax's dense Adam. Compile time is measured apart and excluded
from the throughput. The reference is a plain PyTorch CPU loop over the same
model and loss (embedding tables, dense ``torch.optim.Adam``, the same batch
size, ``torch.set_num_threads(2)``), timed in the same run when torch can be
imported.

Scenario. Synthetic data of ``n_ratings`` ratings on a ``n_users x n_items``
matrix, uniform ids, ratings in 1..5, propensities in [0.05, 1]. The data do
not matter for speed, only the sizes do. The validation pass that closes each
epoch of the trainer (on ``n_valid`` ratings) is included in its time, and
so is its shuffle.

`biaslab bench` (:func:`main`) prints every figure of the lab with the ratio
to its reference, all measured in the same run: the implicit simulator
against a per-visit Python loop (:mod:`experiments.bench_sim`); MF-IPS
training single-seed against the PyTorch loop (this module); eight seeds
trained together with ``jax.vmap`` against one by one and against one seed
(:func:`bench_replicates`); bandit OPE against bare numpy
(:mod:`experiments.bench_ope`); and a small sweep on 1 against 2 Dask workers
(:func:`bench_dask_sweep`).

Timing rule. Each figure is the fastest of ``epochs`` timings (whole epochs
for JAX, ``torch_steps`` minibatches for torch) after a warm-up, because
other work on a shared machine only ever slows a run down.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from estimators import train as trainer
from estimators.models import init_mf

__all__ = ["bench_mf_ips", "bench_replicates", "bench_dask_sweep", "main"]


def _synthetic(rng: np.random.Generator, n: int, n_users: int, n_items: int):
    return trainer.RatingData(
        users=rng.integers(0, n_users, n).astype(np.int32),
        items=rng.integers(0, n_items, n).astype(np.int32),
        ratings=rng.integers(1, 6, n).astype(np.float32),
        propensity=rng.uniform(0.05, 1.0, n),
    )


def _time_jax(optimizer, train, valid, n_users, n_items, dim, batch_size, epochs):
    """(samples per second over ``epochs`` timed epochs, compile seconds)."""
    n_train = train.users.shape[0]
    spec = trainer._Spec(
        objective="ips",
        optimizer=optimizer,
        batch_size=batch_size,
        n_batches=-(-n_train // batch_size),
        n_cells_drawn=1,
        n_users=n_users,
        n_items=n_items,
    )
    hyper = trainer._Hyper(
        *map(jnp.float32, (1e-3, 1e-4, n_train / (n_users * n_items),
                           1 / (n_users * n_items)))
    )
    key = jax.random.key(0)
    params = init_mf(key, n_users, n_items, dim, 0.1, 3.0)
    state = trainer._State(params, trainer._init_opt(optimizer, params), None, None)
    train_arrays = trainer._device_split(train)
    valid_arrays = trainer._device_split(valid)
    args = (state, train_arrays, valid_arrays, hyper, key)

    start = time.perf_counter()
    compiled = trainer._epoch.lower(*args, spec=spec).compile()
    compile_s = time.perf_counter() - start

    state, estimate = compiled(*args)  # warm-up: first run touches memory
    jax.block_until_ready(estimate)
    fastest = np.inf
    for epoch in range(epochs):
        key = jax.random.fold_in(key, epoch)
        start = time.perf_counter()
        state, estimate = compiled(state, train_arrays, valid_arrays, hyper, key)
        jax.block_until_ready((state, estimate))
        fastest = min(fastest, time.perf_counter() - start)
    if not np.isfinite(float(estimate)):
        raise FloatingPointError(f"benchmark run with {optimizer} diverged")
    return n_train / fastest, compile_s


def _time_torch(train, n_users, n_items, dim, batch_size, steps, repeats):
    """Samples per second of a plain PyTorch loop over ``steps`` minibatches,
    the fastest of ``repeats`` timings; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    torch.manual_seed(0)
    n_train = train.users.shape[0]
    density = n_train / (n_users * n_items)
    l2 = 1e-4

    user_factors = torch.nn.Embedding(n_users, dim)
    item_factors = torch.nn.Embedding(n_items, dim)
    user_bias = torch.nn.Embedding(n_users, 1)
    item_bias = torch.nn.Embedding(n_items, 1)
    for table in (user_factors, item_factors):
        torch.nn.init.normal_(table.weight, std=0.1)
    for table in (user_bias, item_bias):
        torch.nn.init.zeros_(table.weight)
    mu = torch.nn.Parameter(torch.tensor(3.0))
    modules = [user_factors, item_factors, user_bias, item_bias]
    parameters = [mu] + [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)

    users = torch.from_numpy(train.users.astype(np.int64))
    items = torch.from_numpy(train.items.astype(np.int64))
    ratings = torch.from_numpy(train.ratings)
    propensity = torch.from_numpy(train.propensity.astype(np.float32))

    def one_step(rows):
        u, i = users[rows], items[rows]
        p_u, q_i = user_factors(u), item_factors(i)
        b_u, c_i = user_bias(u).squeeze(-1), item_bias(i).squeeze(-1)
        rhat = mu + b_u + c_i + (p_u * q_i).sum(-1)
        error = (rhat - ratings[rows]) ** 2
        penalty = (p_u**2).sum(-1) + (q_i**2).sum(-1) + b_u**2 + c_i**2
        loss = density * (error / propensity[rows]).mean() + l2 * penalty.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    order = torch.randperm(n_train)
    batches = [order[k : k + batch_size] for k in range(0, n_train, batch_size)]
    for rows in batches[:5]:  # warm-up
        one_step(rows)
    steps = min(steps, len(batches))
    fastest = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for rows in batches[:steps]:
            one_step(rows)
        fastest = min(fastest, time.perf_counter() - start)
    return sum(len(rows) for rows in batches[:steps]) / fastest


def bench_mf_ips(
    n_ratings: int = 1_000_000,
    dim: int = 64,
    n_users: int = 50_000,
    n_items: int = 10_000,
    batch_size: int = 4096,
    epochs: int = 3,
    torch_steps: int = 100,
    n_valid: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Throughput of MF-IPS training with the sparse optimiser and with Adam,
    and the ratio of each to a PyTorch CPU loop of the same model and loss.

    Returns a dict: ``sparse_samples_per_s``, ``sparse_compile_s``,
    ``adam_samples_per_s``, ``adam_compile_s``, ``torch_samples_per_s`` (None
    when torch cannot be imported), ``sparse_vs_torch`` and ``adam_vs_torch``
    (None likewise), and the sizes and thread settings used.
    """
    rng = np.random.default_rng(seed)
    train = _synthetic(rng, n_ratings, n_users, n_items)
    valid = _synthetic(rng, n_valid, n_users, n_items)
    result: dict[str, Any] = dict(
        n_ratings=n_ratings, dim=dim, n_users=n_users, n_items=n_items,
        batch_size=batch_size, jax_backend=jax.default_backend(),
        cpu_count=os.cpu_count(),
    )
    torch_speed = _time_torch(
        train, n_users, n_items, dim, batch_size, torch_steps, repeats=epochs
    )
    # Let the other library's worker threads stop spinning before timing.
    time.sleep(1.0)
    for optimizer in ("sparse", "adam"):
        speed, compile_s = _time_jax(
            optimizer, train, valid, n_users, n_items, dim, batch_size, epochs
        )
        result[f"{optimizer}_samples_per_s"] = speed
        result[f"{optimizer}_compile_s"] = compile_s
        time.sleep(1.0)
    result["torch_samples_per_s"] = torch_speed
    for optimizer in ("sparse", "adam"):
        ratio = None
        if torch_speed is not None:
            ratio = result[f"{optimizer}_samples_per_s"] / torch_speed
        result[f"{optimizer}_vs_torch"] = ratio
    return result


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench_replicates(
    n_ratings: int = 35_000,
    dim: int = 16,
    n_users: int = 1_000,
    n_items: int = 1_000,
    seeds: int = 8,
    optimizer: str = "adam",
    batch_size: int = 1024,
    epochs: int = 10,
    n_valid: int = 5_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds to train MF-IPS for one seed, for ``seeds`` seeds one by one,
    and for ``seeds`` seeds vmapped (:func:`estimators.train.fit_batch`),
    every fit exactly ``epochs`` epochs (no early stop, so both paths do the
    same work).

    Each figure is timed twice: ``cold`` from empty compilation caches (what
    a fresh process pays, compilation included) and ``warm`` right after
    (programs compiled). Returns those six times, ``pick`` (what
    :func:`estimators.train.choose_mode` chooses at this size) and the sizes.
    The defaults are the mnar-ratings teaching world (1,000 x 1,000, about
    35k training ratings, dim 16, dense Adam, batch 1024).
    """
    rng = np.random.default_rng(seed)
    train = _synthetic(rng, n_ratings, n_users, n_items)
    valid = _synthetic(rng, n_valid, n_users, n_items)
    cfg = trainer.TrainConfig(dim=dim, optimizer=optimizer, batch_size=batch_size,
                              lr=1e-3, l2=1e-4, max_epochs=epochs,
                              patience=epochs)
    keys = [jax.random.key(k) for k in range(seeds)]

    def run(count, mode):
        return lambda: trainer.fit_batch(
            "ips", [train] * count, [valid] * count, n_users, n_items,
            [cfg] * count, trainer.DRConfig(), keys[:count], mode=mode)

    result: dict[str, Any] = dict(n_ratings=n_ratings, dim=dim, n_users=n_users,
                                  n_items=n_items, seeds=seeds, epochs=epochs,
                                  optimizer=optimizer,
                                  pick=trainer.choose_mode(n_ratings, seeds, dim))
    for name, call in (("one", run(1, "loop")), ("loop", run(seeds, "loop")),
                       ("vmap", run(seeds, "vmap"))):
        jax.clear_caches()
        result[f"{name}_cold_s"] = _timed(call)
        result[f"{name}_warm_s"] = _timed(call)
    return result


_SWEEP = """experiment = "mnar-ratings"
seeds = {seeds}

[set]
methods = ["mf-naive", "mf-ips"]
propensities = ["true"]
"world.n_users" = {users}
"world.n_items" = {users}
"world.dim" = 4
"selection.density" = 0.1
"train.dim" = 4
"train.l2_grid" = [0.001]
"train.max_epochs" = {epochs}
"train.batch_size" = 256
"propensity.logistic_steps" = 5

[grid]
"selection.alpha" = [0.2, 0.5]
"""


def bench_dask_sweep(seeds: int = 4, n_users: int = 300, epochs: int = 20
                     ) -> dict[str, Any]:
    """Wall seconds of one small mnar-ratings sweep (2 grid points x
    ``seeds`` seeds) on a local Dask cluster of 1 and of 2 workers, cluster
    start included; None when Dask is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return dict(cells=2 * seeds, dask=None)
    import tempfile
    from pathlib import Path

    from experiments.sweep import run_sweep

    result: dict[str, Any] = dict(cells=2 * seeds, n_users=n_users, dask=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.toml"
        path.write_text(_SWEEP.format(seeds=seeds, users=n_users, epochs=epochs))
        for workers in (1, 2):
            result[f"workers{workers}_s"] = _timed(lambda: run_sweep(
                path, Path(folder) / f"out{workers}", overwrite=True,
                backend="dask", workers=workers, show_progress=False))
    return result


def _print_replicates(label: str, r: dict[str, Any], aim: str) -> None:
    print(f"mf-ips {r['seeds']} seeds, {label}: {r['n_ratings']:,} ratings, "
          f"{r['n_users']:,} x {r['n_items']:,}, dim {r['dim']}, {r['optimizer']}, "
          f"{r['epochs']} epochs each; chooser picks {r['pick']}")
    for when in ("cold", "warm"):
        one, loop, vmap = (r[f"{k}_{when}_s"] for k in ("one", "loop", "vmap"))
        print(f"  {when} ({'compile included' if when == 'cold' else 'compiled'}):"
              f" one seed {one:.2f} s; {r['seeds']} one by one {loop:.2f} s "
              f"({loop / one:.1f}x one); vmapped {vmap:.2f} s ({vmap / one:.1f}x "
              f"one; one by one / vmapped = {loop / vmap:.2f})")
    picked = r["vmap_cold_s"] if r["pick"] == "vmap" else r["loop_cold_s"]
    print(f"  aim: {aim}; chooser's pick ({r['pick']}) cold {picked:.2f} s = "
          f"{picked / r['one_cold_s']:.1f}x one seed, "
          f"{picked / min(r['loop_cold_s'], r['vmap_cold_s']):.2f}x the faster path")


def main(quick: bool = False) -> int:
    """Print every figure with its reference; ``quick`` uses small sizes (a
    smoke check, well under a minute)."""
    from experiments import bench_ope, bench_sim

    print("== simulation")
    bench_sim.main(["--visits", "20000", "--loop-visits", "500", "--no-softmax"]
                   if quick else [])

    print("== mf-ips training, one seed")
    _print_mf_ips(quick)

    print("== mf-ips training, seeds vmapped vs one by one")
    if quick:
        teaching = dict(n_ratings=5_000, n_users=200, n_items=200, dim=8, epochs=2,
                        n_valid=1_000)
        large = dict(n_ratings=50_000, n_users=2_000, n_items=1_000, dim=16,
                     optimizer="sparse", batch_size=4096, epochs=1, n_valid=2_000)
    else:
        teaching = {}
        large = dict(n_ratings=1_000_000, n_users=50_000, n_items=10_000, dim=64,
                     optimizer="sparse", batch_size=4096, epochs=2, n_valid=10_000)
    _print_replicates("teaching size", bench_replicates(**teaching),
                      "8 seeds in at most 2.5x the time of one")
    _print_replicates("large", bench_replicates(**large),
                      "the chooser's pick no slower than one by one")

    print("== off-policy evaluation")
    bench_ope.main(["--rounds", "20000", "--repeats", "1"] if quick else [])

    print("== sweep on Dask workers")
    d = bench_dask_sweep(**(dict(seeds=4, n_users=60, epochs=2) if quick else {}))
    if d["dask"] is None:
        print("dask sweep: unavailable (pip install 'biaslab[dask]' to measure it)")
    else:
        print(f"dask sweep of {d['cells']} mnar-ratings cells ({d['n_users']} x "
              f"{d['n_users']} worlds), cluster start included: 1 worker "
              f"{d['workers1_s']:.1f} s, 2 workers {d['workers2_s']:.1f} s; "
              f"ratio 1/2 workers {d['workers1_s'] / d['workers2_s']:.2f}x")
    return 0


def _print_mf_ips(quick: bool) -> None:
    if quick:
        sizes = dict(n_ratings=50_000, dim=16, n_users=2_000, n_items=1_000,
                     epochs=3, torch_steps=10)
    else:
        sizes = {}
    r = bench_mf_ips(**sizes)
    print(f"setup: {r['n_ratings']} ratings, {r['n_users']} users x {r['n_items']} "
          f"items, dim {r['dim']}, batch {r['batch_size']}, "
          f"jax on {r['jax_backend']}, {r['cpu_count']} cpus")
    for optimizer in ("sparse", "adam"):
        print(f"mf-ips jax {optimizer}: {r[f'{optimizer}_samples_per_s']:,.0f} "
              f"samples/s (compile {r[f'{optimizer}_compile_s']:.2f} s, excluded)")
    if r["torch_samples_per_s"] is None:
        print("torch reference: unavailable (torch not importable; "
              "pip install torch to measure it)")
    else:
        print(f"torch reference (dense Adam, 2 threads): "
              f"{r['torch_samples_per_s']:,.0f} samples/s")
        for optimizer in ("sparse", "adam"):
            print(f"ratio jax {optimizer} / torch: {r[f'{optimizer}_vs_torch']:.1f}x")


if __name__ == "__main__":
    raise SystemExit(main())
