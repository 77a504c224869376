"""The terminal between two prompts: keys typed while korepl is busy wait, untouched, for the next prompt.

At the prompt, prompt_toolkit reads the keyboard in raw mode.  Between prompts (a command, a streamed
continuation, the spinner while the model loads) nobody reads it, and in the terminal's ordinary
(canonical) mode the tty would act on the keys typed meanwhile: Ctrl+D, Ctrl+W and Ctrl+U would end
or edit a line behind korepl's back, a line would be cut at 4,095 bytes, Ctrl+\\ would kill korepl
(SIGQUIT) and Ctrl+Z stop it, and each line of a paste would be entered on its own.

`BusyTerminal` turns all of that off and keeps the bytes (read as they come, so that a long paste
cannot fill the tty's 4 KiB buffer and hold back a Ctrl+C behind it); `replay` gives them to the
next prompt through prompt_toolkit's own parser, so they mean there what they would have meant
typed there.  Only Ctrl+C acts at once (SIGINT): it stops a continuation, `InterruptGuard` decides when.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import sys
import termios
import threading

from prompt_toolkit.input.typeahead import get_typeahead
from prompt_toolkit.input.vt100_parser import Vt100Parser

# Spelt with a leading zero (terminals read the number as 2004): prompt_toolkit writes the plain
# "\x1b[?2004h" as each prompt starts, and the pty tests take that spelling as the sign of a prompt.
PASTE_ON = "\x1b[?02004h"
PASTE_OFF = "\x1b[?2004l"
# Every special character but VINTR (Ctrl+C): disabled, each becomes a plain byte for the next prompt.
SPECIAL_CHARS = ("VEOF", "VEOL", "VEOL2", "VERASE", "VWERASE", "VKILL", "VREPRINT", "VLNEXT", "VDISCARD",
                 "VQUIT", "VSUSP", "VDSUSP", "VSTART", "VSTOP", "VSTATUS", "VSWTC")
DRAIN_GRACE = 0.05  # seconds: the tty hands a long burst over in parts; wait this long for the next part
PASTE_WAIT = 1.0  # seconds: the longest wait for the rest of a paste whose end mark has not come yet
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"  # what the terminal puts around a paste


class BusyTerminal:
    """`with terminal:` around what korepl does between two prompts; `take_typed_ahead()` then has the keys.

    The first `with` sets the busy mode and it stays until `close()` (at the end of the REPL, or at
    exit whatever ends korepl): each prompt's raw mode starts from it and returns to it, so no key
    ever meets the terminal's own line editing, not even one typed in the instant between a prompt
    ending and the next `with`.  Inside a `with`, a thread reads what is typed; the rest of a burst
    is read at its end.  Not a terminal (piped): nothing to do.
    """

    def __init__(self, fd: int | None = None):
        self._fd = fd
        self._own: list | None = None  # the terminal's own attributes, while korepl holds it in busy mode
        self._typed = bytearray()
        self._reader: threading.Thread | None = None
        self._stop_reading: tuple[int, int] | None = None  # a pipe, written to when the reader must stop

    def __enter__(self) -> BusyTerminal:
        if self._own is None:
            try:
                fd = sys.stdin.fileno() if self._fd is None else self._fd
                self._own = termios.tcgetattr(fd)
            except (OSError, ValueError, AttributeError, termios.error):
                return self  # not a terminal
            self._fd = fd
            atexit.register(self.close)
        self._hold()
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if self._own is None:
            return False
        try:
            self._stop_reader()
        finally:
            if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
                self.close()  # korepl is probably on its way out: give the terminal back now
        return False

    def take_typed_ahead(self) -> bytes:
        """The bytes typed while busy since the last call, as the terminal sent them."""
        typed, self._typed = bytes(self._typed), bytearray()
        return typed

    def close(self) -> None:
        """The terminal as it was before korepl, bracketed paste off."""
        if self._own is None:
            return
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self._fd, termios.TCSANOW, self._own)
        _write(PASTE_OFF)
        self._own = None
        atexit.unregister(self.close)

    @contextlib.contextmanager
    def suspended(self):
        """The terminal as it was, for a program that reads it itself ($EDITOR); busy again after."""
        if self._own is None:
            yield
            return
        self._stop_reader()  # what is typed from now on is the program's
        _write(PASTE_OFF)
        termios.tcsetattr(self._fd, termios.TCSANOW, self._own)
        try:
            yield
        finally:
            self._hold()

    def _hold(self) -> None:
        """Busy mode (again: an editor may have changed it), bracketed paste on, the reader started."""
        termios.tcsetattr(self._fd, termios.TCSANOW, busy_attributes(self._own, self._fd))
        _write(PASTE_ON)  # prompt_toolkit turns it off as each prompt ends: a paste comes in marked as one
        self._stop_reading = os.pipe()
        self._reader = threading.Thread(target=self._read, name="korepl-typed-ahead", daemon=True)
        self._reader.start()

    def _stop_reader(self) -> None:
        """Stop the reader, then take what is still on its way (the rest of a burst)."""
        stop_read, stop_write = self._stop_reading
        try:
            os.write(stop_write, b"x")
            self._reader.join()
        finally:
            os.close(stop_read)
            os.close(stop_write)
        self._typed += drain(self._fd)
        while _in_paste(self._typed):  # a paste is read to its end mark: the next prompt gets it whole
            more = drain(self._fd, wait=PASTE_WAIT)
            if not more:
                break
            self._typed += more

    def _read(self) -> None:
        """The reader thread: keep what is typed until told to stop."""
        stop = self._stop_reading[0]
        while True:
            try:
                ready = select.select([self._fd, stop], [], [])[0]
                if stop in ready:
                    return
                chunk = os.read(self._fd, 65536)
            except InterruptedError:
                continue
            except OSError:  # the terminal went away
                return
            if not chunk:
                return
            self._typed += chunk


def busy_attributes(attrs: list, fd: int) -> list:
    """`attrs` (as tcgetattr gives them) with the tty's line editing and all signal keys but Ctrl+C off."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    # Bytes as typed: Enter stays \r as at the prompt, Ctrl+S and Ctrl+Q are keys, not flow control.
    iflag &= ~(termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR)
    # No line editing, no echo (the next prompt shows the keys), no Ctrl+V/Ctrl+O/Ctrl+W/Ctrl+R.
    lflag &= ~(termios.ICANON | termios.ECHO | termios.IEXTEN)
    # Ctrl+C still raises SIGINT at once; it does not discard the keys typed before it, nor the
    # output still queued for the screen (which would then be short of the text kept).
    lflag |= termios.ISIG | termios.NOFLSH
    cc = list(cc)
    disabled = _vdisable(fd)
    keep = {termios.VINTR, termios.VMIN, termios.VTIME}
    for name in SPECIAL_CHARS:
        index = getattr(termios, name, None)
        if index is not None and index not in keep and disabled is not None:
            cc[index] = disabled
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def _vdisable(fd: int) -> bytes | None:
    """The value that disables a special character (_POSIX_VDISABLE: 0 on Linux, 0xff on the BSDs)."""
    try:
        value = os.fpathconf(fd, "PC_VDISABLE")
    except (OSError, ValueError):
        return b"\x00" if sys.platform.startswith("linux") else None
    return None if value < 0 else bytes([value])


def drain(fd: int, wait: float = 0.0) -> bytes:
    """Every byte waiting on `fd` (after waiting up to `wait` for the first): a burst is read to its end."""
    data = bytearray()
    while True:
        try:
            if not select.select([fd], [], [], wait)[0]:
                return bytes(data)
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:  # the terminal went away
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
        wait = DRAIN_GRACE


def _in_paste(typed: bytes) -> bool:
    return typed.rfind(PASTE_START) > typed.rfind(PASTE_END)


def replay(app, typed: bytes) -> bool:
    """Give `typed` to the prompt `app` is starting (call it from pre_run), as if typed there.

    Keys the previous prompt read but did not use (typed after its Enter) come first; the bytes are
    decoded as prompt_toolkit decodes the terminal (UTF-8, other bytes as surrogate escapes).
    True when the keys entered a line: the prompt is over before it is shown.
    """
    keys = get_typeahead(app.input)
    parser = Vt100Parser(keys.append)
    parser.feed_and_flush(typed.decode("utf-8", errors="surrogateescape"))
    app.key_processor.feed_multiple(keys)
    app.key_processor.process_keys()
    done = app.future is not None and app.future.done() and not app.future.cancelled()
    return done and app.future.exception() is None


def _write(sequence: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if sys.stdout.isatty():
            sys.stdout.write(sequence)
            sys.stdout.flush()


class InterruptGuard:
    """Ctrl+C raises at once, except while a piece of text is being printed: then right after it.

    So a continuation can be stopped in the middle of a forward pass, yet never in the middle of
    writing a piece to the screen (which would leave the screen short of the kept text).  Used
    inside a `BusyTerminal`, which keeps Ctrl+C a signal and keeps queued output (NOFLSH).
    """

    def __init__(self):
        self._shielded = False
        self._pending = False

    def __enter__(self) -> InterruptGuard:
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> bool:
        signal.signal(signal.SIGINT, self._previous)
        return False

    def _on_sigint(self, signum, frame):
        if self._shielded:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self):
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt
