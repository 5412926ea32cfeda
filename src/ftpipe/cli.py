"""The ``ftpipe`` command.

    ftpipe s3 up|down|status                      the embedded S3 server (SeaweedFS on 127.0.0.1)
    ftpipe run --local --config FILE              compile the DAG and run it with KFP's local runner
    ftpipe compile --config FILE -o pipeline.yaml the YAML a platform engineer uploads to KFP
    ftpipe submit --host URL --config FILE        compile the DAG and start one run on a KFP cluster
    ftpipe schedule --host URL --config FILE --cron "0 3 * * 1"   create or replace a recurring run
    ftpipe registry list|show|promote|sync        registered models, versions and aliases
    ftpipe config validate FILE | config schema   check a config file; print its JSON schema
    ftpipe models derive SRC DST --layers N       a smaller candidate: the first N layers of SRC
    ftpipe serve-manifest NAME --config FILE      a KServe InferenceService for a registered version
    ftpipe s3 cp SRC DST                          copy a file or directory to or from S3

Thin by design: every command parses its arguments and calls the library. User errors end with one
line on stderr and a non-zero exit. ``main(argv)`` returns the exit code, so tests call it in-process.
Commands that need the DAG import the ``pipelines`` package lazily, so ``ftpipe`` itself never
imports ``kfp`` until it must.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ftpipe import __version__
from ftpipe.config import PipelineConfig, config_schema, load_config
from ftpipe.errors import FtpipeError


def _console():
    from rich.console import Console

    return Console()


# -- s3 ---------------------------------------------------------------------------------------


def _s3_up(args: argparse.Namespace) -> int:
    from ftpipe import s3server

    state = s3server.start(s3_port=args.port)
    print(f"S3 server up at {state.endpoint_url} (pid {state.pid}); bucket '{s3server.DEFAULT_BUCKET}' ready")
    print(f"credentials: {s3server.state_dir() / 'server.json'} (readable only by you)")
    return 0


def _s3_down(args: argparse.Namespace) -> int:
    from ftpipe import s3server

    print("S3 server stopped" if s3server.stop() else "no embedded S3 server was running")
    return 0


def _s3_status(args: argparse.Namespace) -> int:
    from ftpipe import s3server

    state = s3server.read_state()
    if state is None:
        print("embedded S3 server: down")
        return 1
    print(f"embedded S3 server: up at {state.endpoint_url} (pid {state.pid}, data in {state.data_dir})")
    return 0


def _s3_cp(args: argparse.Namespace) -> int:
    from ftpipe.storage import Storage, is_s3

    storage = Storage()
    source = Path(args.source)
    if not is_s3(args.source) and source.is_dir():
        written = storage.upload_dir(source, args.destination)
        print(f"copied {len(written)} files to {args.destination}")
    elif is_s3(args.source):
        storage.download_file(args.source, args.destination)
        print(f"copied {args.source} to {args.destination}")
    else:
        if not source.is_file():
            raise FtpipeError(f"not found: {args.source}")
        storage.upload_file(source, args.destination)
        print(f"copied {args.source} to {args.destination}")
    return 0


# -- pipeline ---------------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    from pipelines.runner import compile_pipeline

    config = load_config(args.config)
    output = compile_pipeline(config, args.output, image=args.image)
    print(f"compiled pipeline written to {output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        print("ftpipe: error: only --local runs here; use `ftpipe compile` and upload the YAML to KFP", file=sys.stderr)
        return 2
    from pipelines.runner import run_local

    config = load_config(args.config)
    result = run_local(config, force_retrain=args.force_retrain)
    _print_run_summary(config, result)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipelines.submit import Connection, submit_run

    config = load_config(args.config)
    connection = Connection.resolve(args.host, args.token, args.namespace)
    run = submit_run(
        config,
        connection,
        experiment=args.experiment,
        run_name=args.run_name,
        image=args.image,
        service_account=args.service_account,
    )
    print(f"submitted run '{run.run_name}' to experiment '{run.experiment_name}' on {connection.host}")
    print(run.url)
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.submit import Connection, kfp_cron, schedule_run

    kfp_cron(args.cron)  # a bad cron fails before anything is compiled or sent
    config = load_config(args.config)
    connection = Connection.resolve(args.host, args.token, args.namespace)
    scheduled = schedule_run(
        config,
        connection,
        args.cron,
        name=args.name,
        experiment=args.experiment,
        image=args.image,
        service_account=args.service_account,
    )
    if scheduled.replaced:
        done = f"replaced recurring run '{scheduled.name}' (deleted {', '.join(scheduled.replaced)})"
    else:
        done = f"created recurring run '{scheduled.name}'"
    print(
        f"{done} in experiment '{scheduled.experiment_name}' on {connection.host}: cron '{scheduled.cron}' "
        f"(KFP '{scheduled.kfp_cron}'), at most one run at a time, no catch-up"
    )
    print(scheduled.url)
    return 0


def _print_run_summary(config: PipelineConfig, result) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"data check: {result.data_check}")
    evaluation = result.evaluation
    if evaluation is None:
        console.print(f"pipeline finished in {result.seconds:.0f} s; full log: {result.log_path}")
        return
    table = Table(title="Test metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in config.task.metrics:
        if name in evaluation.metrics:
            marker = " (primary)" if name == evaluation.primary_metric else ""
            table.add_row(name + marker, f"{evaluation.metrics[name]:.4f}")
    console.print(table)
    for reason in evaluation.reasons:
        console.print(f"  gate: {reason}")
    if result.registered is not None:
        console.print(
            f"[green]registered {result.registered.model_name} version {result.registered.version}[/green] "
            f"at {result.registered.version_uri}"
        )
        if result.registered.cost_line:
            console.print(f"cost: {result.registered.cost_line}", markup=False, highlight=False, soft_wrap=True)
    else:
        console.print("[yellow]gate failed: nothing registered[/yellow]")
    console.print(f"pipeline finished in {result.seconds:.0f} s; full log: {result.log_path}")


# -- registry ---------------------------------------------------------------------------------


def _registry(args: argparse.Namespace):
    from ftpipe.registry import ModelRegistry
    from ftpipe.storage import Storage

    if args.config:
        config = load_config(args.config)
        return ModelRegistry(Storage(config.storage), config.registry.uri)
    return ModelRegistry(Storage(), args.registry_uri)


def _registry_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    registry = _registry(args)
    if args.name is None:
        table = Table(title="Registered models")
        table.add_column("model")
        table.add_column("versions", justify="right")
        for name in registry.list_models():
            table.add_row(name, str(len(registry.list_versions(name))))
    else:
        table = Table(title=f"Versions of {args.name}")
        for column in ("version", "created", "task", "primary metric", "value", "aliases"):
            table.add_column(column)
        aliases = registry.list_aliases(args.name)
        for version in registry.list_versions(args.name):
            metadata = version.metadata
            # Versions registered before tasks existed are text classifiers ranked by macro-F1.
            primary = metadata.get("primary_metric", "f1_macro")
            table.add_row(
                str(version.version),
                str(version.created_at),
                metadata.get("task", "text_classification"),
                primary,
                _fmt(metadata.get("metrics", {}).get(primary)),
                ", ".join(sorted(a for a, v in aliases.items() if v == version.version)),
            )
    _console().print(table)
    return 0


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _registry_show(args: argparse.Namespace) -> int:
    from ftpipe.errors import RegistryError

    registry = _registry(args)
    if args.alias:
        version = registry.resolve_alias(args.name, args.alias)
        if version is None:
            raise RegistryError(f"model {args.name} has no alias '{args.alias}'")
    else:
        version = registry.get_version(args.name, args.version) if args.version else registry.latest_version(args.name)
    print(json.dumps(version.model_dump(mode="json"), indent=2, sort_keys=True, default=str))
    return 0


def _registry_export(args: argparse.Namespace) -> int:
    """A version as a plain ``from_pretrained`` directory, written whole or not at all."""
    import shutil
    import tempfile

    from ftpipe.errors import RegistryError
    from ftpipe.training import adapters

    destination = Path(args.destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise RegistryError(f"--merged {destination}: exists and is not an empty directory")
    registry = _registry(args)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ftpipe-export-", dir=destination.parent) as scratch:
        downloaded = registry.download(args.name, args.version, Path(scratch) / "version")
        if adapters.is_adapter_dir(downloaded):
            written = adapters.merged_copy(downloaded, Path(scratch) / "merged", registry.storage)
            how = "its adapter merged into its base"
        else:
            written, how = downloaded, "merged weights as registered"
        if destination.exists():
            destination.rmdir()
        shutil.move(str(written), destination)
    print(f"{args.name} version {args.version}: {how}, written to {destination}")
    return 0


def _registry_sync(args: argparse.Namespace) -> int:
    """A version recorded again in the registries of the config's ``export`` section (ftpipe.export)."""
    from ftpipe.errors import ConfigError
    from ftpipe.export import export_version

    if not args.config:
        raise ConfigError("registry sync needs --config: its export section names the registries")
    config = load_config(args.config)
    if not config.export.mlflow and config.export.kubeflow_model_registry is None:
        raise ConfigError(f"{args.config} exports nowhere: set export.mlflow or export.kubeflow_model_registry")
    registry = _registry(args)
    version = registry.get_version(args.name, args.version)
    aliases = [alias for alias, number in registry.list_aliases(args.name).items() if number == version.version]
    for where in export_version(config, version, version.metadata.get("run_id"), aliases, strict=True).values():
        print(f"{args.name} version {version.version}: {where}")
    return 0


def _registry_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    registry.set_alias(args.name, args.alias, args.version)
    print(f"{args.name}: alias '{args.alias}' now points at version {args.version}")
    return 0


def _serve_manifest(args: argparse.Namespace) -> int:
    from ftpipe import serving
    from ftpipe.registry import ModelRegistry
    from ftpipe.storage import Storage

    config = load_config(args.config)
    registry = ModelRegistry(Storage(config.storage), config.registry.uri)
    version = serving.resolve_version(registry, args.name, args.alias, args.version)
    text = serving.render(serving.manifests(config, version), version)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"{args.name} version {version.version} ({version.model_uri}): InferenceService written to {output}")
    return 0


# -- config and models ------------------------------------------------------------------------


def _config_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: valid ({len(config.candidates)} candidates, model name {config.registry.model_name})")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def _models_derive(args: argparse.Namespace) -> int:
    from ftpipe.models import derive_first_layers

    parameters = derive_first_layers(args.source, args.destination, args.layers)
    print(f"wrote {args.destination}: first {args.layers} layers of {args.source}, {parameters:,} parameters")
    return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftpipe", description="Fine-tuning pipelines for Kubeflow Pipelines.")
    parser.add_argument("--version", action="version", version=f"ftpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    s3 = commands.add_parser("s3", help="the embedded S3 server, and copies to and from S3")
    s3_commands = s3.add_subparsers(dest="s3_command", required=True)
    up = s3_commands.add_parser("up", help="start the embedded S3 server (authentication on)")
    up.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    up.set_defaults(handler=_s3_up)
    s3_commands.add_parser("down", help="stop the embedded S3 server").set_defaults(handler=_s3_down)
    s3_commands.add_parser("status", help="is the embedded S3 server up?").set_defaults(handler=_s3_status)
    cp = s3_commands.add_parser("cp", help="copy a file or directory to or from S3")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(handler=_s3_cp)

    run = commands.add_parser("run", help="run the whole pipeline")
    run.add_argument("--local", action="store_true", help="with KFP's local runner (the only mode here)")
    run.add_argument("--config", required=True, help="pipeline config YAML")
    run.add_argument(
        "--force-retrain", action="store_true", help="fine-tune even when the data is what production saw"
    )
    run.set_defaults(handler=_run)

    compile_ = commands.add_parser("compile", help="write the compiled pipeline YAML for a KFP cluster")
    compile_.add_argument("--config", required=True, help="pipeline config YAML")
    compile_.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML path")
    compile_.add_argument("--image", default=None, help="component image (default: ftpipe:<version>)")
    compile_.set_defaults(handler=_compile)

    def kfp_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--host", default=None, help="KFP API URL (default: $KF_PIPELINES_ENDPOINT)")
        sub.add_argument("--config", required=True, help="pipeline config YAML")
        sub.add_argument(
            "--experiment", default=None, help="KFP experiment, created if missing (default: ftpipe-<model>)"
        )
        sub.add_argument("--image", default=None, help="component image (default: ftpipe:<version>)")
        sub.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user KFP)")
        sub.add_argument(
            "--service-account",
            default=None,
            help="Kubernetes ServiceAccount the run's pods use (k8s/ ships the least-privilege "
            "ftpipe-pipeline-runner; default: KFP's own)",
        )
        sub.add_argument(
            "--token", default=None, help="bearer token (default: the file named by $KF_PIPELINES_SA_TOKEN_PATH)"
        )
        return sub

    submit = kfp_parser("submit", "compile the DAG and start one run on a KFP cluster")
    submit.add_argument("--run-name", default=None, help="run name (default: ftpipe-<model>-<UTC time>)")
    submit.set_defaults(handler=_submit)
    schedule = kfp_parser("schedule", "create or replace a recurring run: one run at a time, no catch-up")
    schedule.add_argument("--cron", required=True, help='standard five-field cron, e.g. "0 3 * * 1" (Mondays 03:00)')
    schedule.add_argument("--name", default=None, help="recurring run name (default: ftpipe-<model>)")
    schedule.set_defaults(handler=_schedule)

    registry = commands.add_parser("registry", help="registered models, versions and aliases")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)

    def registry_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = registry_commands.add_parser(name, help=help_text)
        sub.add_argument("--config", default=None, help="take the registry URI and storage from this config")
        sub.add_argument("--registry-uri", default="s3://ftpipe/registry", help="registry prefix")
        return sub

    listing = registry_parser("list", "list models, or the versions of one model")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(handler=_registry_list)
    show = registry_parser("show", "show one version's metadata (default: the latest)")
    show.add_argument("name")
    show.add_argument("version", nargs="?", type=int)
    show.add_argument("--alias", default=None, help="show the version this alias points at")
    show.set_defaults(handler=_registry_show)
    export = registry_parser("export", "write a version as a plain from_pretrained directory (adapters merged)")
    export.add_argument("name")
    export.add_argument("version", type=int)
    export.add_argument("--merged", dest="destination", required=True, metavar="DIR", help="a new or empty directory")
    export.set_defaults(handler=_registry_export)
    sync = registry_parser("sync", "record a version in the MLflow / Kubeflow Model Registry of --config's export")
    sync.add_argument("name")
    sync.add_argument("version", type=int)
    sync.set_defaults(handler=_registry_sync)
    promote = registry_parser("promote", "point an alias at a version (atomic compare-and-swap)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", default="production")
    promote.set_defaults(handler=_registry_promote)

    config = commands.add_parser("config", help="validate a config file, or print its JSON schema")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="validate a config file")
    validate.add_argument("file")
    validate.set_defaults(handler=_config_validate)
    config_commands.add_parser("schema", help="print the config JSON schema").set_defaults(handler=_config_schema)

    serve_manifest = commands.add_parser("serve-manifest", help="a KServe InferenceService for a registered version")
    serve_manifest.add_argument("name", help="registered model name")
    which = serve_manifest.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None, help="serve the version this alias points at (default: production)")
    which.add_argument("--version", type=int, default=None, help="serve this version")
    serve_manifest.add_argument("--config", required=True, help="config YAML (registry, storage, cluster, serving)")
    serve_manifest.add_argument("-o", "--output", default=None, help="output YAML path (default: stdout)")
    serve_manifest.set_defaults(handler=_serve_manifest)

    models = commands.add_parser("models", help="prepare candidate models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    derive = model_commands.add_parser("derive", help="save the first N layers of a model as a smaller candidate")
    derive.add_argument("source")
    derive.add_argument("destination")
    derive.add_argument("--layers", type=int, required=True)
    derive.set_defaults(handler=_models_derive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FtpipeError as error:
        print(f"ftpipe: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ftpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
