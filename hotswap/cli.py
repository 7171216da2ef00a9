"""`hotswap serve | backends | compare | prepare`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from hotswap.backends.registry import discover_backends
from hotswap.config import load_config
from hotswap.errors import HotswapError
from hotswap.models.processing import validate_processor_options

app = typer.Typer(add_completion=False, no_args_is_help=True, help="One inference endpoint, any accelerator.")
console = Console(stderr=True)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=console, show_path=False)])


def _load(config: Path):
    """The discovered backends and the validated config; a config error exits with status 2."""
    registry = discover_backends()
    try:
        cfg = load_config(config, registry)
        validate_processor_options(cfg, str(config))
        return registry, cfg
    except HotswapError as exc:
        console.print(f"[red]config error[/red]\n{exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
    host: str | None = typer.Option(None, help="Override server.host."),
    port: int | None = typer.Option(None, help="Override server.port."),
) -> None:
    """Serve the configured models over the Open Inference Protocol v2 (HTTP)."""
    from hotswap.serve.app import create_app
    from hotswap.serve.server import HotswapServer, uvicorn_config

    registry, cfg = _load(config)
    if host is not None:
        cfg.server.host = host
    if port is not None:
        cfg.server.port = port
    _setup_logging(cfg.server.log_level)
    try:
        application = create_app(cfg, registry, config_dir=config.resolve().parent, progress=sys.stderr.isatty())
    except HotswapError as exc:
        console.print(f"[red]config error[/red]\n{config}: {exc}")
        raise typer.Exit(2) from None
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


@app.command()
def compare(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
    model: str | None = typer.Option(None, help="Model name (default: the first)."),
    batch: int = typer.Option(4, min=1, help="Rows per call."),
    runs: int = typer.Option(10, min=1, help="Timed calls per backend."),
) -> None:
    """Run a model on every backend of its chain that loads here: max abs error against the first
    one that loaded, and median latency, side by side."""
    from hotswap.compare import compare_chain

    registry, cfg = _load(config)
    chosen = cfg.model(model) if model else (cfg.models[0] if cfg.models else None)
    if chosen is None:
        console.print(f"[red]no model {model!r} in {config}[/red]")
        raise typer.Exit(2)
    _setup_logging("warning")
    table = Table(title=f"{chosen.name}: batch {batch}, {runs} runs each, error vs the first backend that loaded")
    for column in ("#", "backend", "device", "max abs error", "p50 ms"):
        table.add_column(column)
    for r in compare_chain(chosen, registry, config.resolve().parent, batch, runs):
        if r.skipped:
            table.add_row(str(r.position), r.label, "-", f"[yellow]skipped[/yellow]: {r.skipped}", "-")
        else:
            errors = ", ".join(f"{name} {err:.1e}" for name, err in r.max_abs_error.items())
            table.add_row(str(r.position), r.label, r.device, errors, f"{r.p50_ms:.2f}")
    Console(width=200).print(table)


@app.command()
def prepare(source: str = typer.Argument("builtin:minilm", help="Built-in model to prepare.")) -> None:
    """Prepare a built-in model's artifacts in the cache ($HOTSWAP_HOME) ahead of serving."""
    from hotswap.models.sources import resolve_source

    _setup_logging("info")
    prepared = resolve_source(source, progress=True)
    for path in prepared.artifacts:
        console.print(f"{path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
