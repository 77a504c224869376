"""A seeded random soak of the REPL in a real pseudo-terminal: 300+ mixed turns against `korepl --demo`.

Each turn is drawn with `random.Random(seed)`: typed Korean lines (short, medium, and long ones of
300-600 characters that push the text past the 1024-token window again and again), pasted blocks,
empty lines, /retry, /undo, /redo, /alt, /peek, /pick, /edit (through an editor script that changes
the text without a human), /ban, /stop, /save, /load, /reset and changes of /topk, /temp, /max and
/seed (so a run is replayable: the REPL's sampling is seeded from the soak's seed too), plus a few
bad arguments.  After every turn the soak sends /context and checks:

- no "Traceback" anywhere, and the REPL answers (the /context header comes back);
- the model's view never exceeds its window (`sees the last M of its W`: M <= W, and M <= N);
- the continuation shown (the cyan pieces) is exactly the end of the text /context shows; after a
  typed (or pasted, or empty) line the text is exactly the text before, the line joined after a
  newline (unless the text was empty or ended in whitespace) and the continuation;
- each move's own promise: /undo's and /redo's "the text now ends: …", /redo brings back exactly the
  text /undo took, /edit gives exactly the edited text, /save writes exactly the text /context shows
  (and its ids), /load brings back exactly what was saved, /reset empties it, banned words and stop
  texts are never shown, /peek K lists K candidates, an empty line adds at most /max tokens.

At the end: at least 3 window slides happened, the korepl process's resident memory grew by less
than RSS_GROWTH_LIMIT_MB, and /quit leaves with status 0.

The seed is printed (`pytest -s` shows it; a failure's message carries it, with the last turns' output).
Replay another with KOREPL_SOAK_SEED=N; KOREPL_SOAK_TURNS=N changes the number of turns (default 320);
KOREPL_SOAK_LOG=FILE writes every turn's output and the state after it.  /context after every turn
doubles the lines sent (640 for 320 turns); it costs no model run, and the whole soak took 18-70 s
on the shared 2-core machine (the spread is the other work on it).
"""

from __future__ import annotations

import inspect
import json
import os
import random
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import pexpect

from test_repl_pty import ANSI, Terminal

SEED = int(os.environ.get("KOREPL_SOAK_SEED", "20261125"))
TURNS = int(os.environ.get("KOREPL_SOAK_TURNS", "320"))
# Measured on the shared 2-core machine (seeds 1-5 and 20261125, 320 turns each): RSS 362-363 MB once
# the model has loaded, 394-411 MB at the end: +31 to +48 MB, almost all of it in the first 40 turns
# (the first prefills' activations, the allocator settling); over 1200 turns it crept on by ~15 MB more.
# 150 MB leaves room for noise and still catches a real leak (a prefill's activations or a KV cache kept
# per turn or per slide would add tens of MB within a few dozen turns).
RSS_GROWTH_LIMIT_MB = 150
MIN_SLIDES = 3

# A new prompt: prompt_toolkit turns bracketed paste on, erases below the cursor (ESC [ J) and draws
# the prompt's '>', with nothing but escapes between.  Requiring the erase and the '>' keeps this from
# matching a bracketed paste turned on while the REPL is busy (even before a continuation that begins
# with '>').  Each turn is followed by /context, whose header is the real marker: anything printed
# before it still belongs to the turn, so a prompt matched too early costs nothing.
READY = r"\x1b\[\?2004h(?:\x1b\[[0-9;?]*[A-Za-z])*?\x1b\[J(?:\x1b\[[0-9;?]*[A-Za-z])*>"
HEADER = r"(\d+) tokens in the text; the model sees the last (\d+) of its (\d+)"
CYAN = re.compile(r"\x1b\[0;36m(.*?)\x1b\[0m", re.S)  # the "continuation" style: text the model wrote
VIEW_MARK = "[▸ the model sees from here] "
SLID = "[the window slid: the model no longer sees the first"
OVER_WINDOW = "more than the model's window of"
TIMEOUT = 90

SENTENCES = (
    "대한민국은 민주공화국이다.",
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.",
    "국가는 개인이 가지는 불가침의 기본적 인권을 확인하고 이를 보장할 의무를 진다.",
    "모든 국민은 법 앞에 평등하다.",
    "누구든지 성별·종교 또는 사회적 신분에 의하여 정치적·경제적·사회적·문화적 생활의 모든 영역에 있어서 차별을 받지 아니한다.",
    "모든 국민은 신체의 자유를 가진다.",
    "모든 국민은 거주·이전의 자유를 가진다.",
    "모든 국민은 직업선택의 자유를 가진다.",
    "모든 국민은 양심의 자유를 가진다.",
    "국회는 국민의 보통·평등·직접·비밀선거에 의하여 선출된 국회의원으로 구성한다.",
    "대통령은 국가의 원수이며, 외국에 대하여 국가를 대표한다.",
    "법률안에 이의가 있을 때에는 대통령은 이의서를 붙여 국회로 환부하고, 그 재의를 요구할 수 있다.",
    "이 법은 공포한 날부터 시행한다.",
    "제1조 이 법은 국민의 생활 안정과 복지 향상에 이바지함을 목적으로 한다.",
    "문서를 저장하려면 파일 메뉴에서 저장을 선택하십시오.",
    "표의 셀을 선택한 다음 서식 메뉴에서 셀 속성을 여십시오.",
    "이 대화 상자에서 글꼴과 크기, 그리고 문자 간격을 지정할 수 있습니다.",
    "오늘은 바람이 불고 하늘이 맑았다.",
    "그는 오래된 편지를 다시 읽으며 창밖을 한참 바라보았다.",
    "작은 마을 앞으로 강이 천천히 흐르고 있었다.",
    "우리는 새벽 기차를 타고 바다로 떠났다.",
)
WORDS = tuple(w for s in SENTENCES for w in s.split())
ODD = ("뷁", "똠방각하", "햏", "😀", "ㅋㅋㅋ", "abc", "2026년", "①", "…", "«인용»")  # rare, unknown or non-Hangul
BAN_WORDS = ("국민", "법률", "대통령", "정한다", "국가", "있다")
STOP_TEXTS = ("다.", "을", "국회", "①", "하여")  # /stop strips spaces around its TEXT



def apply_edit(op: dict, text: str) -> str:
    """What the soak's editor does to the text (the soak computes the same to know what to expect)."""
    kind = op["kind"]
    if kind == "append":
        return text + op["text"]
    if kind == "cut":
        return text[: max(0, len(text) - op["n"])]
    if kind == "replace":
        start = min(op["at"], len(text))
        return text[:start] + op["text"] + text[start + op["length"]:]
    return text


# The editor korepl runs for /edit ($VISUAL): it applies the operation the soak wrote to OPS_FILE.
EDITOR_SCRIPT = inspect.getsource(apply_edit) + '''
import json, pathlib, sys
target = pathlib.Path(sys.argv[1])
op = json.loads(pathlib.Path(OPS_FILE).read_text(encoding="utf-8"))
target.write_text(apply_edit(op, target.read_text(encoding="utf-8")), encoding="utf-8")
'''


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Soak:
    def __init__(self, tmp_path: Path, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.tmp = tmp_path
        self.ops_file = tmp_path / "edit-op.json"
        script = tmp_path / "editor.py"
        script.write_text(f"OPS_FILE = {str(self.ops_file)!r}\n" + EDITOR_SCRIPT, encoding="utf-8")
        editor = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
        self.term = Terminal(tmp_path, extra_env={"VISUAL": editor, "EDITOR": editor})
        self.child = self.term.child
        self.child.delaybeforesend = None  # no sleep before each send: 600 sends would cost 30 s
        self.turn = 0
        self.action = "(start)"
        self.transcript: list[str] = []  # every turn, for a failure's message (the last few) and KOREPL_SOAK_LOG
        self.kinds: Counter[str] = Counter()
        self.slides = 0
        self.over_window = 0
        self.continuations = 0  # turns that showed some continuation
        self.stops: list[str] = []  # stop texts the soak added
        self.bans: list[str] = []
        self.saved: dict[str, dict] = {}  # file -> what /context showed when it was saved
        self.redo_stack: list[str] = []  # the texts /undo took us from, for /redo to bring back
        self.peeked = 5
        self.max_new = 16
        self.slowest = (0.0, "")
        self.settings_changes = 0  # how many setting turns so far (an empty line re-samples only after one)
        try:
            # Start from a clean stream: whatever Terminal's start-up left unread ends before this answer.
            marker = f"/soaksync{random.randrange(10**9)}"
            self.child.send(marker + "\r")
            self.expect("unknown command " + marker)
            self.expect(READY)
            self.n, self.m, self.w, self.text = self.context()  # the state after the last turn
        except BaseException:
            self.child.terminate(force=True)
            raise

    # --- talking to the REPL ---------------------------------------------------------------------

    def fail(self, message: str) -> None:
        recent = "\n".join(self.transcript[-6:])
        raise AssertionError(f"seed {self.seed} (KOREPL_SOAK_SEED={self.seed}), turn {self.turn} {self.action!r}: "
                             f"{message}\n--- the last turns ---\n{recent[-6000:]}")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def expect(self, pattern: str) -> str:
        try:
            self.child.expect(pattern, timeout=TIMEOUT)
        except pexpect.EOF:
            self.fail("korepl exited; its last output:\n" + ANSI.sub("", self.child.before or "")[-3000:])
        except pexpect.TIMEOUT:
            self.fail(f"no answer in {TIMEOUT} s; its last output:\n" + ANSI.sub("", self.child.before or "")[-3000:])
        return self.child.before

    def context(self, before: str = "") -> tuple[int, int, int, str]:
        """Send /context; (N, M, W, text) from its answer.  `before`: the turn's output so far (checked too)."""
        self.child.send("/context\r")
        self.turn_raw = before + self.expect(HEADER)
        n, m, w = (int(g) for g in self.child.match.groups())
        body = ANSI.sub("", self.expect(READY))
        self.check("Traceback" not in self.turn_raw + body, "a traceback:\n" + ANSI.sub("", self.turn_raw + body))
        self.check(body.startswith("\n"), f"/context's text does not follow its header: {body[:200]!r}")
        text = body[1:]
        text = text[:-1] if text.endswith("\n") else text
        if text == "(the text is empty)":
            text = ""
        self.check(text.count(VIEW_MARK) <= 1, "more than one view mark")
        self.check((VIEW_MARK in text) == (m < n), f"the view mark is shown iff the model sees less than the "
                                                   f"whole text (N={n}, M={m})")
        return n, m, w, text.replace(VIEW_MARK, "", 1)

    def do(self, kind: str, line: str, paste: bool = False, label: str = "") -> str:
        """Run one turn (a line, or a bracketed paste) and the /context after it; the turn's output, codes removed."""
        self.turn += 1
        self.action = (line if len(line) < 80 else line[:60] + f"… ({len(line)} chars)") or "(an empty line)"
        self.action += label
        self.kinds[kind] += 1
        self.before = (self.n, self.m, self.w, self.text)
        started = time.perf_counter()
        self.child.send(f"\x1b[200~{line}\x1b[201~\r" if paste else line + "\r")
        raw = self.expect(READY)
        self.n, self.m, self.w, self.text = self.context(raw)
        raw = self.turn_raw
        elapsed = time.perf_counter() - started
        self.slowest = max(self.slowest, (elapsed, self.action))
        out = ANSI.sub("", raw)
        self.cont = "".join(CYAN.findall(raw))
        self.transcript.append(f"[{self.turn} {kind} {elapsed:.2f}s] {self.action}\n{out[-1500:]}"
                               f"\n  -> {self.n} tokens, sees {self.m} of {self.w}; ends {self.text[-80:]!r}")
        # The invariants of every turn.
        self.check(self.m <= self.w, f"the model's view ({self.m} tokens) exceeds its window ({self.w})")
        self.check(0 <= self.m <= self.n, f"the view ({self.m}) is more than the text ({self.n})")
        self.slides += out.count(SLID)
        self.over_window += out.count(OVER_WINDOW)
        if self.cont.strip():
            self.continuations += 1
        return out

    def moved(self) -> None:
        """The text was changed by something other than /undo and /redo: /redo has nothing to bring back."""
        self.redo_stack.clear()

    def check_ends(self, out: str, what: str) -> None:
        """A move's '…the text now ends: TAIL' is the end of the text /context shows."""
        tail = out.rsplit("the text now ends: ", 1)[-1].split("\n", 1)[0]
        if tail == "(nothing: the text is empty)":
            self.check(self.text == "", f"{what} said the text is empty; it is {self.text[-80:]!r}")
            return
        tail = tail[1:] if tail.startswith("…") else tail
        self.check(self.text.replace("\n", " ⏎ ").endswith(tail),
                   f"{what} said the text ends {tail!r}; /context's ends {self.text[-60:]!r}")

    def check_continuation(self, typed: str | None = None, picked: bool = False) -> None:
        """What was shown as written is exactly how the text now ends (the screen drops a continuation's
        leading spaces at the start of a line, the text keeps them).  After a typed line (or an empty one:
        typed == ""), the text is exactly the text before, the line joined after a newline unless the
        text was empty or ended in whitespace, and the continuation."""
        cont = self.cont
        self.check(self.text.endswith(cont), f"the shown continuation {cont!r} is not the end of the text "
                                             f"{self.text[-200:]!r}")
        if typed is not None:
            before = self.before[3]
            joint = "" if not typed or not before or before[-1:].isspace() else "\n"
            prefix = before + joint + typed
            rest = self.text[len(prefix):]
            self.check(self.text.startswith(prefix) and rest.lstrip(" ") == cont,
                       f"the text is not the text before + {joint!r} + the line + the continuation {cont!r}: it "
                       f"ends {self.text[-200:]!r}")
        if picked:  # /pick appends the candidate the writer chose, whatever it spells: check what followed it
            cont = "".join(CYAN.findall(self.turn_raw)[1:])
        for word in self.bans:
            self.check(word not in cont, f"the banned word {word!r} was written: {cont!r}")
        for stop in self.stops:
            self.check(stop not in cont, f"the stop text {stop!r} was shown: {cont!r}")

    # --- the turns -------------------------------------------------------------------------------

    def korean_line(self) -> tuple[str, bool]:
        """A line to type (or paste, when the second item is True)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        elif roll < 0.65:
            line = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 3)))
        else:  # long: 300-600 characters, so the text passes the window again and again
            target, parts = rng.randint(300, 600), []
            while sum(len(p) + 1 for p in parts) < target:
                parts.append(rng.choice(SENTENCES))
            line = " ".join(parts)[:target].rstrip()
        if rng.random() < 0.08:  # a few rare or unknown characters
            words = line.split(" ")
            words.insert(rng.randint(0, len(words)), rng.choice(ODD))
            line = " ".join(words)
        if rng.random() < 0.06:
            line += " "  # the next line joins after this space, without a newline
        if rng.random() < 0.07:  # a pasted block of several lines
            lines = [line] + [rng.choice(SENTENCES) for _ in range(rng.randint(1, 3))]
            return "\n".join(lines), True
        return line, False

    def text_turn(self) -> None:
        line, paste = self.korean_line()
        out = self.do("text", line, paste)
        self.check("[stopped" not in out, "a continuation stopped by itself")
        self.moved()
        self.check_continuation(typed=line)

    def empty_turn(self) -> None:
        self.do("empty", "")  # after "the model ended the text at once", Enter draws again (it may end again)
        self.check_continuation(typed="")
        # An empty line adds only the continuation: at most /max tokens (and a start token to an empty text).
        self.check(self.n - self.before[0] <= self.max_new + 1,
                   f"an empty line added {self.n - self.before[0]} tokens with /max {self.max_new}")

    def retry_turn(self) -> None:
        if self.rng.random() < 0.5:  # under the same seed and settings, /retry would write the same again
            self.settings_changes += 1
            self.do("seed", f"/seed {self.rng.randint(0, 10**6)}")
        out = self.do("retry", "/retry")
        if "nothing to retry" in out:
            self.check(self.text == self.before[3], "a refused /retry changed the text")
            return
        self.moved()
        self.check_continuation()

    def undo_turn(self) -> None:
        out = self.do("undo", "/undo")
        if "nothing to undo" in out:
            self.check(self.text == self.before[3], "a refused /undo changed the text")
            return
        self.check("took back the" in out, f"/undo said: {out[-300:]!r}")
        self.check_ends(out, "/undo")
        self.redo_stack.append(self.before[3])

    def redo_turn(self) -> None:
        out = self.do("redo", "/redo")
        if "nothing to redo" in out:
            self.check(not self.redo_stack, "/redo had nothing to bring back right after /undo")
            self.check(self.text == self.before[3], "a refused /redo changed the text")
            return
        self.check("brought back" in out, f"/redo said: {out[-300:]!r}")
        self.check_ends(out, "/redo")
        if self.redo_stack:
            expected = self.redo_stack.pop()
            self.check(self.text == expected, f"/redo did not bring back the text /undo took: "
                                              f"{self.text[-120:]!r} != {expected[-120:]!r}")

    def alt_turn(self) -> None:
        if self.rng.random() < 0.5:
            out = self.do("alt", "/alt")
            self.check(self.text == self.before[3], "/alt (the list) changed the text")
            listed = re.findall(r"^([ *])(\d+)\. ", out, re.M)
            if listed:
                self.check([int(n) for _, n in listed] == list(range(1, len(listed) + 1)),
                           f"/alt numbered its list {listed}")
                self.check(sum(mark == "*" for mark, _ in listed) <= 1, "/alt marked more than one as current")
            else:
                self.check("no alternatives here yet" in out, f"/alt said: {out[-300:]!r}")
            return
        number = self.rng.randint(1, 3)
        out = self.do("alt N", f"/alt {number}")
        if re.search(r"no alternatives here|there are \d+ alternatives", out):
            self.check(self.text == self.before[3], "a refused /alt N changed the text")
            return
        self.moved()
        self.check(f"alternative {number}: " in out, f"/alt {number} said: {out[-300:]!r}")
        self.check_ends(out, f"/alt {number}")
        chosen = out.split(f"alternative {number}: ", 1)[1].split("\n")[1]  # a continuation has no newline
        self.check(self.text.endswith(chosen), f"/alt {number} showed {chosen!r}, not the text's end")

    def peek_turn(self) -> None:
        count = self.rng.choice((None, 1, 3, 5, 10, 30, 100))
        out = self.do("peek", "/peek" if count is None else f"/peek {count}")
        self.check(self.before[:2] == (self.n, self.m) and self.text == self.before[3],
                   f"/peek changed the text or the view: {self.before[:2]} -> {(self.n, self.m)}")
        rows = re.findall(r"^\s*(\d+)\. .*?(\d+\.\d\d)%$", out, re.M)
        self.check(len(rows) == (count or 5), f"/peek {count} listed {len(rows)} candidates")
        probabilities = [float(p) for _, p in rows]
        self.check(probabilities == sorted(probabilities, reverse=True), f"/peek is not sorted: {probabilities}")
        self.check(sum(probabilities) <= 100.5, f"/peek's probabilities add up to {sum(probabilities)}")
        self.peeked = count or 5

    def pick_turn(self) -> None:
        number = self.rng.randint(1, min(self.peeked, 5))
        out = self.do("pick", f"/pick {number}")
        if "is the stop token" in out:
            self.check(self.text == self.before[3], "a refused /pick changed the text")
            return
        self.moved()
        self.check_continuation(picked=True)

    def edit_turn(self) -> None:
        rng, text = self.rng, self.text
        kind = rng.choice(("append", "append", "cut", "replace", "replace", "none"))
        op = {"kind": kind}
        if kind == "append":
            op["text"] = rng.choice((" 편집한 문장을 덧붙인다.", "그리고", "\n새 문단이 시작된다.", " 😀 끝"))
        elif kind == "cut":
            op["n"] = rng.randint(1, 40)
        elif kind == "replace":  # anywhere: near the start of a long text, the view must be rebuilt
            op["at"] = rng.randint(0, len(text))
            op["length"] = rng.randint(0, 12)
            op["text"] = rng.choice(("시민", "", "가나다 라마", "국회의원"))
        self.ops_file.write_text(json.dumps(op, ensure_ascii=False), encoding="utf-8")
        expected = apply_edit(op, text)
        if expected.endswith("\n") and not text.endswith("\n"):
            expected = expected[:-1]  # korepl drops the newline an editor adds (documented in repl.edit_text)
        out = self.do("edit", "/edit", label=f" (the editor: {op}, on a text of {len(text)} characters)")
        if expected == text:
            self.check("no change" in out and self.text == text, f"an edit that changed nothing: {out[-300:]!r}")
            return
        self.moved()
        self.check("the text is updated" in out, f"/edit said: {out[-300:]!r}")
        self.check(self.text == expected, f"/edit ({op}) gave {self.text[-200:]!r}, not {expected[-200:]!r}")

    def ban_turn(self) -> None:
        if self.bans and self.rng.random() < 0.5:
            word = self.rng.choice(self.bans)
            out = self.do("ban", f"/ban del {word}")
            self.bans.remove(word)
        else:
            word = self.rng.choice(BAN_WORDS)
            out = self.do("ban", f"/ban add {word}")
            if word not in self.bans:
                self.bans.append(word)
        self.check(re.search(r"ban = |is already in ban", out) is not None, f"/ban said: {out[-300:]!r}")
        self.check(self.text == self.before[3], "/ban changed the text")

    def stop_turn(self) -> None:
        if self.stops and self.rng.random() < 0.6:
            text = self.rng.choice(self.stops)
            out = self.do("stop", f"/stop del {text}")
            self.stops.remove(text)
        elif self.rng.random() < 0.15:
            out = self.do("stop", "/stop del 없는것")  # not in the list: one line saying so
            self.check("is not in stop" in out, f"/stop del of a missing text said: {out[-300:]!r}")
            return
        else:
            text = self.rng.choice(STOP_TEXTS)
            out = self.do("stop", f"/stop add {text}")
            if text not in self.stops:
                self.stops.append(text)
        self.check(re.search(r"stop = |is already in stop", out) is not None, f"/stop said: {out[-300:]!r}")

    def save_turn(self) -> None:
        path = self.tmp / f"soak-{len(self.saved) % 4}.json"  # four files, overwritten in turn
        out = self.do("save", f"/save {path}")
        self.check(f"saved to {path}" in out, f"/save said: {out[-300:]!r}")
        data = json.loads(path.read_text(encoding="utf-8"))
        self.check(data["text"] == self.text, f"the saved text is not the text /context shows: "
                                              f"{data['text'][-120:]!r} != {self.text[-120:]!r}")
        self.check(len(data["ids"]) == self.n and len(data["ids"]) - data["view_start"] == self.m,
                   f"the saved ids ({len(data['ids'])}, view from {data['view_start']}) are not /context's "
                   f"({self.n}, sees {self.m})")
        self.saved[str(path)] = {"text": self.text, "n": self.n}

    def load_turn(self) -> None:
        if not self.saved:
            return self.save_turn()
        path = self.rng.choice(sorted(self.saved))
        out = self.do("load", f"/load {path}")
        self.check(f"loaded {path}: " in out, f"/load said: {out[-300:]!r}")
        self.moved()
        self.check(self.text == self.saved[path]["text"] and self.n == self.saved[path]["n"],
                   f"/load did not bring back what was saved: {self.text[-120:]!r}")
        # The file's settings come back with it: forget what the soak set since.
        self.stops = [s for s in json.loads(Path(path).read_text(encoding="utf-8"))["settings"]["stop"]
                      if s in STOP_TEXTS]
        self.bans = [b for b in json.loads(Path(path).read_text(encoding="utf-8"))["settings"]["ban"]]
        self.max_new = json.loads(Path(path).read_text(encoding="utf-8"))["settings"]["max_new_tokens"]

    def reset_turn(self) -> None:
        out = self.do("reset", "/reset")
        self.check("the text is cleared" in out and self.text == "" and self.n == 0, "/reset left a text")
        self.moved()

    def setting_turn(self) -> None:
        rng = self.rng
        self.settings_changes += 1
        kind = rng.choice(("topk", "temp", "max", "seed"))
        if kind == "topk":
            value = rng.choice((1, 2, 5, 10, 40))
            out = self.do("topk", f"/topk {value}")
            self.check(f"top_k = {value}" in out, f"/topk said: {out[-300:]!r}")
        elif kind == "temp":
            value = rng.choice(("0.3", "0.7", "1", "1.3", "2"))
            out = self.do("temp", f"/temp {value}")
            self.check("temperature = " in out, f"/temp said: {out[-300:]!r}")
        elif kind == "max":
            self.max_new = rng.randint(8, 24)
            out = self.do("max", f"/max {self.max_new}")
            self.check(f"max_new_tokens = {self.max_new}" in out, f"/max said: {out[-300:]!r}")
        else:
            value = rng.randint(0, 10**6)
            out = self.do("seed", f"/seed {value}")
            self.check(f"seed = {value}" in out, f"/seed said: {out[-300:]!r}")
        self.check(self.text == self.before[3], "a setting changed the text")

    def bad_turn(self) -> None:
        """A bad argument: one line saying what is allowed; nothing changes."""
        line = self.rng.choice(("/topk 0", "/temp -1", "/max 0", "/peek 0", "/peek 101", "/alt x", "/pick 0",
                                f"/load {self.tmp / 'no-such-file.json'}", "/topkk 3", "/ban remove 국민"))
        out = self.do("bad", line)
        self.check(self.text == self.before[3] and self.n == self.before[0], f"{line} changed the text")
        self.check(re.search(r"must be|usage:|unknown command|the current session is unchanged|did you mean", out)
                   is not None, f"{line} said: {out[-300:]!r}")

    WEIGHTS = {
        "text_turn": 30, "empty_turn": 10, "retry_turn": 6, "undo_turn": 7, "redo_turn": 4, "alt_turn": 6,
        "peek_turn": 7, "pick_turn": 4, "edit_turn": 5, "ban_turn": 3, "stop_turn": 3, "save_turn": 2,
        "load_turn": 2, "reset_turn": 1, "setting_turn": 8, "bad_turn": 2,
    }

    def step(self) -> None:
        names = list(self.WEIGHTS)
        name = self.rng.choices(names, weights=[self.WEIGHTS[n] for n in names])[0]
        getattr(self, name)()

    def quit(self) -> int:
        self.child.send("/quit\r")
        self.child.expect(pexpect.EOF, timeout=60)
        tail = ANSI.sub("", self.child.before or "")
        self.child.close()
        self.check("Traceback" not in tail, "a traceback on /quit:\n" + tail)
        return self.child.exitstatus


def test_soak(tmp_path):
    print(f"\nsoak seed {SEED} (replay with KOREPL_SOAK_SEED={SEED}), {TURNS} turns")
    started = time.perf_counter()
    soak = Soak(tmp_path, SEED)
    try:
        pid = soak.child.pid
        soak.do("setting", f"/seed {SEED}")  # the REPL's own sampling is replayable too
        soak.do("setting", f"/max {soak.max_new}")
        rss_start = rss_mb(pid)
        samples = [rss_start]  # every 40 turns: a leak climbs turn after turn, a settling heap levels off
        while soak.turn < TURNS:
            soak.step()
            if soak.turn % 40 == 0:
                samples.append(rss_mb(pid))
        rss_end = rss_mb(pid)
        rss_peak = max(*samples, rss_end)
        status = soak.quit()
    finally:
        if soak.child.isalive():
            soak.child.terminate(force=True)
        if os.environ.get("KOREPL_SOAK_LOG"):  # every turn's output and the state after it, to read at leisure
            Path(os.environ["KOREPL_SOAK_LOG"]).write_text("\n".join(soak.transcript), encoding="utf-8")
    elapsed = time.perf_counter() - started
    growth = rss_end - rss_start
    print(f"soak: {soak.turn} turns (each followed by /context) in {elapsed:.1f} s; slowest turn "
          f"{soak.slowest[0]:.2f} s ({soak.slowest[1]})")
    print(f"soak: {soak.slides} window slides, {soak.over_window} texts over the window, "
          f"{soak.continuations} turns showed a continuation")
    print("soak: turns by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(soak.kinds.items())))
    print(f"soak: RSS {rss_start:.0f} MB at the start, {rss_end:.0f} MB at the end (peak {rss_peak:.0f} MB), "
          f"growth {growth:+.0f} MB; every 40 turns: {' '.join(f'{r:.0f}' for r in samples)}")
    assert status == 0, f"seed {SEED}: /quit left with status {status}"
    assert soak.slides >= MIN_SLIDES, f"seed {SEED}: only {soak.slides} window slides (need {MIN_SLIDES})"
    assert growth < RSS_GROWTH_LIMIT_MB, f"seed {SEED}: RSS grew by {growth:.0f} MB"
