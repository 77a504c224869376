"""Command line: flags -> settings; one-shot continuation or the REPL; failures -> clear messages and exit codes.

Exit codes: 0 done, 2 a usage, settings or model problem (one message on stderr, no traceback),
130 interrupted with Ctrl+C.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from korepl import __version__, paths, textin
from korepl.errors import UserError
from korepl.loading import DEFAULT_MODEL, DEMO_MODEL_DIR, ModelUnavailable, apply_threads
from korepl.settings import (
    DEVICES,
    DTYPES,
    FIELDS,
    QUANTIZE,
    COMPILE,
    Config,
    ConfigError,
    SettingError,
    defaults_path,
    load_defaults,
    parse_keep_sessions,
    read_config,
)

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="korepl",
        description="Exploratory Korean writing with KoGPT2: type a line, the model continues it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "settings are layered, each overriding the one before:\n"
            f"  1. korepl's defaults: {defaults_path()}\n"
            f"  2. your file, if it exists: {paths.user_config_file()}\n"
            "     (TOML with the same keys as the defaults; set only what you want to change)\n"
            "  3. the flags above.\n"
            "without --prompt and with nothing piped on stdin, korepl opens the interactive REPL."
        ),
    )
    parser.add_argument("--version", action="version", version=f"korepl {__version__}")
    source = parser.add_argument_group("model")
    which = source.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="ID|PATH",
                       help=f"hub id or a folder saved with save_pretrained (default {DEFAULT_MODEL})")
    which.add_argument("--demo", action="store_true",
                       help="use the small Korean demo model shipped with korepl (works offline)")
    source.add_argument("--device", choices=DEVICES, help="where to run the model (default auto: CUDA when present)")
    source.add_argument("--dtype", choices=DTYPES,
                        help="how the weights are held (default float32, which gives exactly Hugging Face's "
                             "numbers; auto measures this machine once and picks the fastest)")
    source.add_argument("--quantize", choices=QUANTIZE,
                        help="int8: every linear layer as dynamic int8, CPU only (default none)")
    source.add_argument("--compile", choices=COMPILE,
                        help="compile the one-token step in the background, GPT-2-family models on the CPU "
                             "(default auto: used where measured faster; on: used once compiled; off: never)")
    source.add_argument("--backend", metavar="URL",
                        help="a serving engine that runs the model (llama.cpp's llama-server, vLLM, SGLang), such "
                             "as http://127.0.0.1:8080 (with or without /v1); --model then names its tokenizer. "
                             "The API key comes from KOREPL_API_KEY or OPENAI_API_KEY, or api_key_command "
                             "in the config file. --backend '' runs the model here")
    source.add_argument("--insecure", action="store_true",
                        help="with an https --backend: do not check the server's TLS certificate (warns)")

    saved = parser.add_argument_group("sessions (each REPL run is saved after every turn)")
    saved.add_argument("--resume", nargs="?", const="", metavar="FILE",
                       help=f"continue the latest session with text in {paths.sessions_dir()}, or FILE")
    saved.add_argument("--export", metavar="FILE",
                       help="with --resume: write the session's text to FILE (.txt plain, .md with the memory) "
                            "and exit")
    saved.add_argument("--sessions", action="store_true", help="list the saved sessions, newest first, and exit")
    saved.add_argument("--keep-sessions", metavar="N",
                       help="how many sessions the state folder keeps; the latest with text always stays (default 50)")
    run = parser.add_argument_group("one-shot")
    run.add_argument("--prompt", metavar="TEXT",
                     help="print the continuation of TEXT and exit (text piped on stdin works the same)")
    run.add_argument("--verbose", action="store_true",
                     help="after the continuation, timings and token counts on stderr, as Ollama's --verbose "
                          "(in the REPL, /stats shows them)")

    decoding = parser.add_argument_group("decoding (each is also a key under [decoding] in the config file)")
    for field in FIELDS:
        flag = _flag(field.name)
        if field.is_switch:
            decoding.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.help)
        elif field.is_list:
            decoding.add_argument(flag, action="append", metavar=field.metavar,
                                  help=field.help + " (repeatable; replaces the configured list)")
            if field.name == "stop":
                decoding.add_argument("--no-stop", action="store_true", help="no stop tokens or texts at all")
        else:
            decoding.add_argument(flag, metavar=field.metavar, help=field.help)
    return parser


def config_from_args(args: argparse.Namespace, base: Config) -> Config:
    """`base` with the flags applied; SettingError names the flag's setting and its range."""
    values = {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name) is not None}
    if args.no_stop and args.stop is None:  # --stop replaces the defaults on its own
        values["stop"] = ()
    model = str(DEMO_MODEL_DIR) if args.demo else (args.model or base.model)
    keep = parse_keep_sessions(args.keep_sessions) if args.keep_sessions is not None else base.keep_sessions
    return Config(model=model, device=args.device or base.device, dtype=args.dtype or base.dtype,
                  quantize=args.quantize or base.quantize, compile=args.compile or base.compile, decoding=base.decoding.with_values(values),
                  keep_sessions=keep, chosen=base.chosen | frozenset(values),
                  backend=(args.backend if args.backend is not None else base.backend).strip(),
                  api_key_command=base.api_key_command, insecure=args.insecure)


def clean_args(args: argparse.Namespace, notices: list[str]) -> None:
    """Text given as flags (the prompt, stop texts, banned words) made clean: any bytes, never a traceback."""
    for name in ("prompt", "stop", "stop_keep", "ban", "memory"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, _clean(value, f"--{name}", notices))
        elif isinstance(value, list):
            setattr(args, name, [_clean(v, f"--{name}", notices) for v in value])


def _clean(text: str, what: str, notices: list[str]) -> str:
    clean = textin.from_str(text, what)
    if clean.note:
        notices.append(f"korepl: {clean.note}")
    return clean.text


def user_config(base: Config) -> tuple[Config, list[str]]:
    """The defaults with the user's file applied; a bad file is reported and skipped."""
    path = paths.user_config_file()
    if not path.is_file():
        return base, []
    notes: list[str] = []
    try:
        return read_config(path, base, notes), notes
    except ConfigError as exc:
        return base, [f"korepl: ignoring your settings file: {exc}; starting on the defaults."]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base, notices = user_config(load_defaults())
    clean_args(args, notices)
    try:
        config = config_from_args(args, base)
    except (SettingError, ConfigError) as exc:
        print(f"korepl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.sessions:
        return list_sessions()

    resume = None
    if args.export is not None and args.resume is None:
        print("korepl: --export writes a saved session's text: use it with --resume [FILE]", file=sys.stderr)
        return EXIT_USAGE
    if args.resume is not None:
        resume = read_resume(args.resume)
        if resume is None:
            return EXIT_USAGE
        if not (args.model or args.demo):  # the model the session was written with
            config = dataclasses.replace(config, model=resume.model or config.model)
        if args.export is not None:
            return export_resumed(resume, config, args.export)

    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty() and args.resume is None:
        piped = textin.decode_bytes(sys.stdin.buffer.read(), "the text on stdin")
        if piped.note:
            notices.append(f"korepl: {piped.note}")
        prompt = piped.text.removesuffix("\n")  # `echo TEXT |` means TEXT, as --prompt TEXT does
    if prompt is None:
        from korepl.repl import run_repl

        return run_repl(config, notices, resume)

    for notice in notices:
        print(notice, file=sys.stderr)
    apply_threads(config.decoding.threads)  # before loading: the load runs on them too
    try:
        if config.backend and config.insecure:
            from korepl.backend import warn_insecure

            warn_insecure()
        from korepl.backend import load

        loaded = load(config)
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:  # a server that cannot be used, an api_key_command that failed
        print(f"korepl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if loaded.remote is not None:
        from korepl import backend

        settings, notes = backend.supported(loaded, config.decoding)  # what the server cannot honour: off
        for note in notes:
            print(note, file=sys.stderr)
        config = dataclasses.replace(config, decoding=settings)
    return run_once(loaded, prompt, config, verbose=args.verbose)


def run_once(loaded, prompt: str, config: Config, verbose: bool = False) -> int:
    """Print the continuation of `prompt` (exactly the text that follows it) as it is generated.

    `verbose`: the figures of korepl.stats follow on stderr, so stdout stays exactly the continuation.
    """
    from korepl.session import Session, SessionError

    try:
        session = Session(loaded, config.decoding)
    except SettingError as exc:  # a setting this model's tokenizer cannot follow (a newline token it lacks)
        print(f"korepl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    session.feed(prompt)
    out = sys.stdout
    try:
        for step in session.generate():
            out.write(step.text)
            out.flush()
    except SessionError as exc:  # nothing to continue from (an empty prompt on a model without a start token)
        print(f"korepl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:  # the serving engine failed mid-answer: what was printed stays
        out.write("\n" if out.isatty() else "")
        print(f"korepl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.write("\n" if out.isatty() else "")
        return EXIT_INTERRUPTED
    if out.isatty():
        out.write("\n")
    ending = session.last_ending
    if ending is not None and ending.reason in ("stop-token", "stop-text"):  # why it stopped, never on stdout
        what = "the stop token" if ending.reason == "stop-token" else "the stop text"
        when = "at once" if ending.new_tokens == 0 else f"after {ending.new_tokens} tokens"
        print(f"korepl: stopped at {what} {ending.detail} {when} (--no-stop or --stop change the stops).",
              file=sys.stderr)
    if verbose and session.last_stats is not None:
        print("\n".join(session.last_stats.lines(load_seconds=loaded.load_seconds)), file=sys.stderr)
    return EXIT_OK


@dataclasses.dataclass(frozen=True)
class Resume:
    """A saved session to continue, read and checked before the model loads."""

    path: str
    data: dict
    model: str | None


def read_resume(choice: str) -> Resume | None:
    """The session --resume names (FILE, or the latest with text); None after saying why not."""
    from korepl import store

    path = Path(choice).expanduser() if choice else store.latest_with_text(paths.sessions_dir())
    if path is None:
        print(f"korepl: no saved session with text to resume in {paths.sessions_dir()}", file=sys.stderr)
        return None
    try:
        data = store.read_file(path)
    except store.StoreError as exc:
        print(f"korepl: cannot resume: {exc}", file=sys.stderr)
        return None
    return Resume(str(path), data, store.model_name(data))


def export_resumed(resume: Resume, config: Config, target: str) -> int:
    """`korepl --resume [FILE] --export OUT`: the session checked as /load checks it, its text written, no REPL.

    The model is loaded because the file is checked against its tokenizer before anything is trusted; with a
    backend, that is the tokenizer and the probed server (a big model's weights are never loaded here for this).
    """
    from korepl import backend, export, store
    from korepl.errors import UserError
    from korepl.session import Session

    try:
        export.check_target(target)  # a bad name is said before the model loads
        loaded = backend.load(config)
    except export.ExportError as exc:
        print(f"korepl: cannot export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:  # a server that cannot be used
        print(f"korepl: cannot export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    settings = config.decoding
    if loaded.remote is not None:  # what the server cannot honour is off, as in the REPL (notes not needed here)
        settings = backend.supported(loaded, settings)[0]
    try:
        session = Session(loaded, settings)
        store.restore(session, resume.data, resume.path)
        print(export.export(session, target))
    except UserError as exc:  # a damaged session file, a missing folder, a suffix not .txt or .md
        print(f"korepl: cannot export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def list_sessions() -> int:
    from korepl import journal

    print("\n".join(journal.listing(paths.sessions_dir())))
    return EXIT_OK
