"""`hotswap serve | ray | backends | compare | prepare`."""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from hotswap.backends.registry import discover_backends
from hotswap.config import DEFAULT_CONFIG, ServerConfig, format_validation_error, load_config, parse_config
from hotswap.deploy.ray_config import RayConfig
from hotswap.errors import HotswapError
from hotswap.models.processing import validate_processor_options

app = typer.Typer(add_completion=False, no_args_is_help=True, help="One inference endpoint, any accelerator.")
console = Console(stderr=True)
ENV_ONLY = "<HOTSWAP_* environment>"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)])


def _config_error(text: str) -> NoReturn:
    """Exit 2 with `text` as written: no rich markup read into its brackets, and no line breaks put
    into it (a path or key broken over two lines cannot be copied or searched for)."""
    console.print("[red]config error[/red]")
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(config: Path | None):
    """The discovered backends and the validated config (from HOTSWAP_* env alone when `config` is
    None); a config error exits with status 2."""
    registry = discover_backends()
    try:
        # No file: the default model (as examples/default.yaml), with HOTSWAP_* overrides on top.
        cfg = load_config(config, registry) if config else parse_config(copy.deepcopy(DEFAULT_CONFIG), ENV_ONLY,
                                                                        registry)
        validate_processor_options(cfg, str(config or ENV_ONLY))
        return registry, cfg
    except HotswapError as exc:
        _config_error(str(exc))


def _override_server(server: ServerConfig, host: str | None, port: int | None,
                     workers: int | None) -> ServerConfig:
    """The server section with the command line's overrides, validated again (bounds, workers vs swap)."""
    overrides = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
    if not overrides:
        return server
    try:
        return ServerConfig.model_validate(server.model_dump() | overrides)
    except ValidationError as exc:
        _config_error(format_validation_error(exc, "command line", ("server",)))


def _serve_workers(cfg, config: Path | None, metrics_dir: str | None) -> None:
    """`server.workers` > 1: the supervisor of serve/workers.py; exits with its status."""
    from hotswap.serve.guard import check_exposure
    from hotswap.serve.workers import WorkerSupervisor

    try:
        check_exposure(cfg.server)  # each worker checks again; failing here spares N start-ups
    except HotswapError as exc:
        _config_error(f"{config or ENV_ONLY}: {exc}")
    config_dir = config.resolve().parent if config else None
    raise typer.Exit(WorkerSupervisor(cfg, config_dir, metrics_dir).run())


@app.command()
def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file; without it the default "
                                       "model (examples/default.yaml) with HOTSWAP_* environment overrides "
                                       "(containers, KServe)."),
    host: str | None = typer.Option(None, help="Override server.host."),
    port: int | None = typer.Option(None, help="Override server.port."),
    workers: int | None = typer.Option(None, help="Override server.workers: server processes sharing the port."),
) -> None:
    """Serve the configured models over the Open Inference Protocol v2 (HTTP)."""
    # Before prometheus_client is imported: one process keeps its metrics in memory (the fast
    # path); only --workers N (serve/workers.py) uses the multiprocess files, in this folder if set.
    metrics_dir = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from hotswap.serve.app import create_app
    from hotswap.serve.server import HotswapServer, uvicorn_config

    registry, cfg = _load(config)
    cfg.server = _override_server(cfg.server, host, port, workers)
    _setup_logging(cfg.server.log_level)
    if cfg.server.workers > 1:
        _serve_workers(cfg, config, metrics_dir)
    try:
        application = create_app(cfg, registry, config_dir=config.resolve().parent if config else None,
                                 progress=sys.stderr.isatty())
    except HotswapError as exc:
        _config_error(f"{config}: {exc}")
    server = HotswapServer(uvicorn_config(application, cfg.server), application.state.dataplane)
    server.run()
    if not server.started:  # lifespan failed: a model could not load
        raise typer.Exit(1)


@app.command()
def backends() -> None:
    """Every discovered backend, its version, and whether it can run on cpu and each accelerator."""
    registry = discover_backends()
    table = Table(title="hotswap backends (entry-point group hotswap.backends)")
    for column in ("backend", "distribution", "runtime", "target", "status"):
        table.add_column(column)
    for name, cls in sorted(registry.available.items()):
        targets = {"default": cls.Options()} | cls.accelerators()
        for i, (target, options) in enumerate(targets.items()):
            try:
                reason = cls.probe(options)
            except Exception as exc:
                reason = f"probe raised {type(exc).__name__}: {exc}"
            status = "[green]ok[/green]" if reason is None else f"[yellow]unavailable[/yellow]: {reason}"
            version = cls.version() if i == 0 else ""
            table.add_row(name if i == 0 else "", registry.distributions.get(name, "") if i == 0 else "",
                          version, target, status)
    for name, error in sorted(registry.failed.items()):
        table.add_row(name, registry.distributions.get(name, ""), "", "-", f"[red]import failed[/red]: {error}")
    Console(width=200).print(table)


def _compare_table(report) -> Table:
    reference = next((e for e in report.entries if e.position == report.reference), None)
    table = Table(title=f"{report.model}: {report.runs} runs per batch size, error vs "
                        f"{escape(f'#{reference.position} {reference.label}') if reference else 'nothing loaded'}")
    for column in ("#", "backend", "device", "batch", "p50 ms", "p99 ms", "rows/s", "max abs error", "min cosine"):
        table.add_column(column)
    for e in report.entries:
        if e.skipped:
            table.add_row(str(e.position), escape(e.label), "-", "-", "-", "-", "-",
                          f"[yellow]skipped[/yellow]: {escape(e.skipped)}", "-")
        for r in e.results:
            errors = ", ".join(f"{name} {err:.1e}" for name, err in r.errors.items())
            # Labels are text, not markup: 'torch[cpu]' must not lose its brackets.
            table.add_row(str(e.position), escape(e.label), escape(e.device), str(r.batch), f"{r.p50_ms:.2f}",
                          f"{r.p99_ms:.2f}", f"{r.rows_per_s:.0f}", errors, f"{r.min_cosine:.6f}")
    return table


@app.command()
def compare(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
    model: str | None = typer.Option(None, help="Model name (default: the first)."),
    batch: list[int] = typer.Option([1, 8, 32], "--batch", min=1, max=4096, help="Rows per call; repeat for "
                                    "several batch sizes."),
    runs: int = typer.Option(20, min=1, max=100_000, help="Timed calls per backend and batch size."),
    reference: int | None = typer.Option(None, min=0, help="Chain position of the reference entry (default: "
                                         "the first that loads)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    html_file: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
    max_abs_error: float | None = typer.Option(None, help="Exit 1 if an entry's max abs error exceeds this."),
    min_cosine: float | None = typer.Option(None, help="Exit 1 if an entry's lowest row cosine is below this."),
) -> None:
    """Run a model on every backend of its chain that loads here, at each batch size: max abs error
    and min cosine against a reference entry, p50 / p99 latency and rows/s. With thresholds, exit 1
    when an entry is off: the gate for a hardware move."""
    import json

    from rich.progress import Progress

    from hotswap.compare import compare_report
    from hotswap.compare_render import render_html

    registry, cfg = _load(config)
    chosen = cfg.model(model) if model else (cfg.models[0] if cfg.models else None)
    if chosen is None or (reference is not None and reference >= len(chosen.backends)):
        console.print(f"[red]no model {model!r} (or chain position {reference}) in {config}[/red]")
        raise typer.Exit(2)
    _setup_logging("warning")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("comparing", total=len(chosen.backends) * len(batch))
        try:
            report = compare_report(chosen, registry, config.resolve().parent, batch, runs, reference,
                                    lambda what: progress.advance(task, 1 if "batch" in what else len(batch)))
        except HotswapError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    report.max_abs_error, report.min_cosine = max_abs_error, min_cosine
    Console(width=200).print(_compare_table(report))
    if json_file is not None:
        json_file.write_text(json.dumps(report.as_dict(), indent=1))
    if html_file is not None:
        html_file.write_text(render_html(report))
    for failure in report.failures():
        console.print(f"[red]FAIL[/red] {escape(failure)}")
    if report.failures():
        raise typer.Exit(1)


@app.command()
def prepare(source: str = typer.Argument("builtin:minilm", help="Built-in model to prepare.")) -> None:
    """Prepare a built-in model's artifacts in the cache ($HOTSWAP_HOME) ahead of serving."""
    from hotswap.models.sources import resolve_source

    _setup_logging("info")
    prepared = resolve_source(source, progress=True)
    for path in prepared.artifacts:
        console.print(f"{path}")


@app.command(name="ray")
def ray_command(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file; its `ray:` section sets replicas "
                                "and resources."),
    address: str | None = typer.Option(None, help="Join a running Ray cluster ('auto' or host:port); default: "
                                       "start a local, loopback-only one."),
    num_cpus: float | None = typer.Option(None, min=0.1, max=4096, help="CPUs of the local cluster (default: "
                                          "all of this machine's)."),
) -> None:
    """Serve the config on Ray Serve: one deployment whose replicas each load every model, behind
    Serve's proxy on server.host:server.port. Ctrl-C or SIGTERM deletes the application."""
    from hotswap.deploy import ray as hotswap_ray

    _registry, cfg = _load(config)
    _setup_logging(cfg.server.log_level)
    try:
        hotswap_ray.start_local_ray(num_cpus, address)
        url = hotswap_ray.deploy(cfg, config.resolve().parent)
    except ImportError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    except HotswapError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    console.print(f"serving on Ray Serve at {url} (Ctrl-C stops)")
    hotswap_ray.serve_until_stopped((cfg.ray or RayConfig()).app_name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
