"""`biaslab bench --quick` prints every figure with its reference."""


from experiments import bench



def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_quick_bench_prints_every_figure(monkeypatch, capsys):
    # The Dask sweep starts two local clusters (tens of seconds); its backend
    # is tested in test_sweep.py, so here it is replaced by fixed figures and
    # only its printing is checked.
    monkeypatch.setattr(bench, "bench_dask_sweep", lambda **_: dict(
        cells=8, n_users=60, dask=True, workers1_s=4.0, workers2_s=2.5))
    assert bench.main(quick=True) == 0
    out = capsys.readouterr().out
    for figure in [
        "== simulation", "vectorised is", "x faster",
        "== mf-ips training, one seed", "mf-ips jax sparse:", "mf-ips jax adam:",
        "torch reference",
        *(["ratio jax sparse / torch", "ratio jax adam / torch"] if _has_torch()
          else ["unavailable"]),
        "8 seeds, teaching size", "8 seeds, large", "one by one / vmapped =",
        "8 seeds in at most 2.5x the time of one", "chooser picks vmap",
        "chooser picks loop", "no slower than one by one",
        "== off-policy evaluation", "ratio ope / numpy",
        "== sweep on Dask workers", "ratio 1/2 workers 1.60x",
    ]:
        assert figure in out, figure


def test_replicate_figures_are_positive_times():
    r = bench.bench_replicates(n_ratings=600, n_users=30, n_items=20, dim=2,
                               seeds=2, epochs=1, n_valid=50, batch_size=256)
    for name in ("one", "loop", "vmap"):
        for when in ("cold", "warm"):
            assert r[f"{name}_{when}_s"] > 0
    assert r["pick"] == "vmap"


