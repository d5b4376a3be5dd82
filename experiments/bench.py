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

__all__ = ["bench_mf_ips", "main"]


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


def main(quick: bool = False) -> int:
    """Print one line per figure; ``quick`` uses small sizes (a smoke check)."""
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
