"""A script's command line as words, never as shell text.

AWS-RunRemoteScript runs `commandLine` through a shell as root (bash on Linux, PowerShell
on Windows): whatever text reaches it runs. So `CommandToRun` is parsed into words (POSIX
shell rules; for a Windows script, without backslash escapes), and accepted only when
- its program is the script that `SourceS3Path` downloads (`pre-script.sh`,
  `./pre-script.sh`; `.\\pre.ps1` for a Windows script), optionally behind an
  interpreter of `INTERPRETERS` with one of its own plain options;
- every argument is plain text: letters, digits and `_ . / : = , @ % + -` (and `\\` in the
  arguments of a Windows script, for paths);
and the command line sent to SSM is rebuilt from those words, each quoted for the shell
that will read it (a Windows script run by itself is named by its path in the download
folder, `& '.\\pre.ps1'`, however the command line named it). Operators, redirections,
substitutions, variables, globbing, quotes that hide any of them, control characters and
other programs are refused by naming the rule they break.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from enum import StrEnum


class Shell(StrEnum):
    POSIX = "posix"  # bash or sh, on Linux
    POWERSHELL = "powershell"  # what AWS-RunRemoteScript uses on Windows


# Scripts run by Windows' PowerShell, recognised by their extension.
WINDOWS_EXTENSIONS = (".ps1", ".bat", ".cmd")
PLAIN = "letters, digits and _ . / : = , @ % + -"
_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,@%+-]+$")
_PLAIN_WINDOWS = re.compile(r"^[A-Za-z0-9_./:=,@%+\\-]+$")
# A PowerShell parameter name (`-Mode`, `-Verbose:`): left bare so that the script binds
# it as a parameter; every other argument is quoted, so it stays one plain string.
_POWERSHELL_PARAMETER = re.compile(r"^-[A-Za-z][A-Za-z0-9]*:?$")


@dataclass(frozen=True)
class Interpreter:
    shell: Shell
    scripts: tuple[str, ...]  # the extensions it may run; () for any non-Windows script
    options: re.Pattern[str]  # its plain options
    option_values: frozenset[str] = frozenset()  # options that take one plain value
    script_flag: str | None = None  # the option that must come right before the script


_SHELL = Interpreter(Shell.POSIX, (), re.compile(r"^-[euxv]{1,4}$"))
_PYTHON = Interpreter(Shell.POSIX, (".py",), re.compile(r"^-[uBIsOE]{1,6}$"))
_POWERSHELL = Interpreter(
    Shell.POWERSHELL,
    (".ps1",),
    re.compile(r"^-(?:NoProfile|NonInteractive|NoLogo|ExecutionPolicy)$", re.IGNORECASE),
    option_values=frozenset({"-executionpolicy"}),
    script_flag="-File",
)
INTERPRETERS: dict[str, Interpreter] = {
    "bash": _SHELL,
    "sh": _SHELL,
    "/bin/bash": _SHELL,
    "/usr/bin/bash": _SHELL,
    "/bin/sh": _SHELL,
    "/usr/bin/sh": _SHELL,
    "python3": _PYTHON,
    "/usr/bin/python3": _PYTHON,
    "powershell": _POWERSHELL,
    "powershell.exe": _POWERSHELL,
    "pwsh": _POWERSHELL,
    "pwsh.exe": _POWERSHELL,
}
INTERPRETER_NAMES = "bash or sh, python3 (.py), or powershell/pwsh -File (.ps1)"
_SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
EXECUTION_POLICIES = frozenset({"bypass", "remotesigned", "allsigned", "unrestricted"})

# What a character that is not plain text would do in a shell, for the refusal.
_MEANING = [
    (";&|", "a command separator or operator"),
    ("<>", "a redirection"),
    ("$`", "a substitution or variable"),
    ("*?[]", "globbing"),
    ("(){}", "grouping or brace expansion"),
    ("'\"", "a quote"),
    ("\\", "an escape"),
    ("~", "home directory expansion"),
    ("!", "history expansion"),
    ("#", "a comment"),
    (" \t", "a space inside one word"),
]


class CommandRejectedError(ValueError):
    """The command line breaks the command policy; the message names the rule."""


def _meaning(character: str) -> str:
    return next((what for chars, what in _MEANING if character in chars), "not plain text")


def _check_plain(word: str, what: str, windows: bool) -> None:
    if (_PLAIN_WINDOWS if windows else _PLAIN).match(word):
        return
    if not word:
        raise CommandRejectedError(f"{what} is empty")
    bad = next(c for c in word if not (_PLAIN_WINDOWS if windows else _PLAIN).match(c))
    raise CommandRejectedError(
        f"{what} {word!r} contains {bad!r} ({_meaning(bad)}); arguments must be plain "
        f"text ({PLAIN})"
    )


def shell_of(script_name: str) -> Shell:
    """The shell AWS-RunRemoteScript runs the command line of this script through."""
    return Shell.POWERSHELL if script_name.lower().endswith(WINDOWS_EXTENSIONS) else Shell.POSIX


def _words(text: str, shell: Shell) -> list[str]:
    if not text.isascii() or not text.isprintable():
        bad = next(c for c in text if not (c.isascii() and c.isprintable()))
        raise CommandRejectedError(
            f"contains the control or non-ASCII character {bad!r}; a command line is one "
            "line of printable ASCII text"
        )
    lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = ""  # a `#` is kept in its word, and refused there
    if shell is Shell.POWERSHELL:
        lexer.escape = ""  # backslashes are path separators on Windows
    try:
        words = list(lexer)
    except ValueError as exc:  # an unbalanced quote
        raise CommandRejectedError(f"cannot be read as words: {exc}") from exc
    if not words:
        raise CommandRejectedError("is empty")
    return words


@dataclass(frozen=True)
class ScriptCommand:
    """A command line that runs the downloaded script, as the words it is made of."""

    shell: Shell
    program: list[str]  # interpreter, its options and the script; or the script alone
    arguments: list[str]

    @classmethod
    def parse(cls, text: str, script_name: str) -> ScriptCommand:
        """`text` read as words and checked against the command policy."""
        if not _SCRIPT_NAME.match(script_name):
            raise CommandRejectedError(
                f"the script's file name {script_name!r} must begin with a letter, digit or _"
            )
        shell = shell_of(script_name)
        windows = shell is Shell.POWERSHELL
        words = _words(text, shell)
        first = words[0]
        interpreter = INTERPRETERS.get(first if not windows else first.lower())
        position = 0
        program: list[str] = []
        if interpreter is not None:
            if interpreter.shell is not shell or not _runs(interpreter, script_name):
                raise CommandRejectedError(
                    f"the interpreter {first!r} cannot run the script {script_name!r}"
                )
            program.append(first)
            position = 1
            while position < len(words) and interpreter.options.match(words[position]):
                option = words[position]
                program.append(option)
                position += 1
                if option.lower() in interpreter.option_values:
                    value = words[position] if position < len(words) else ""
                    if value.lower() not in EXECUTION_POLICIES:
                        raise CommandRejectedError(
                            f"{option} must be followed by one of {sorted(EXECUTION_POLICIES)}"
                        )
                    program.append(value)
                    position += 1
            if interpreter.script_flag is not None:
                flag = words[position] if position < len(words) else ""
                if flag.lower() != interpreter.script_flag.lower():
                    raise CommandRejectedError(
                        f"{first} must run the script with {interpreter.script_flag} "
                        f"{script_name} (after at most the options "
                        "-NoProfile -NonInteractive -NoLogo -ExecutionPolicy <policy>)"
                    )
                program.append(flag)
                position += 1
        script = words[position] if position < len(words) else ""
        if script not in _names_of(script_name, windows):
            where = "after the interpreter and its options" if program else "first"
            odd = next((c for c in script if not _PLAIN_WINDOWS.match(c)), None)
            why = f" ({odd!r} is {_meaning(odd)})" if odd else ""
            raise CommandRejectedError(
                f"must run the downloaded script {script_name!r} ({where}), not "
                f"{script!r}{why}; it may stand behind {INTERPRETER_NAMES}"
            )
        program.append(script)
        arguments = words[position + 1 :]
        for number, argument in enumerate(arguments, start=1):
            _check_plain(argument, f"argument {number}", windows)
        return cls(shell=shell, program=program, arguments=arguments)

    def render(self) -> str:
        """The command line for the shell that will read it, every word quoted for it."""
        if self.shell is Shell.POSIX:
            return shlex.join(self.program + self.arguments)
        head, *options = self.program
        if len(self.program) == 1:  # the script itself: the call operator runs a quoted path
            rendered = ["&", _powershell_quote(_in_working_directory(head))]
        else:
            *options, script = options
            rendered = [head, *options, _powershell_quote(script)]
        rendered += [
            argument if _POWERSHELL_PARAMETER.match(argument) else _powershell_quote(argument)
            for argument in self.arguments
        ]
        return " ".join(rendered)


def _runs(interpreter: Interpreter, script_name: str) -> bool:
    name = script_name.lower()
    if interpreter.scripts:
        return name.endswith(interpreter.scripts)
    return not name.endswith((*WINDOWS_EXTENSIONS, ".py"))


def _names_of(script_name: str, windows: bool) -> set[str]:
    """How a command line may name the downloaded script (it runs in its download folder)."""
    names = {script_name, f"./{script_name}"}
    if windows:
        names.add(f".\\{script_name}")
    return names


def _in_working_directory(script: str) -> str:
    """`.\\name` for the downloaded script, which AWS-RunRemoteScript runs from its download
    folder. PowerShell runs a script of the current folder only when it is named by a path
    (about_Command_Precedence); a bare name is looked up on PATH, where the document adds
    that folder last, after any same-named script elsewhere (docs/aws-facts.md)."""
    return ".\\" + script.removeprefix("./").removeprefix(".\\")


def _powershell_quote(word: str) -> str:
    """A PowerShell verbatim string: nothing inside single quotes is expanded; a quote is
    doubled (plain text holds none, so this is defence in depth)."""
    return "'" + word.replace("'", "''") + "'"


@dataclass(frozen=True)
class RemoteScript:
    """What AWS-RunRemoteScript is asked to run: the checked, rebuilt request."""

    source_s3_path: str
    command_line: str  # rebuilt by ScriptCommand.render, or a line the stage lists exactly
    working_directory: str
    execution_timeout_seconds: int
    delivery_timeout_seconds: int | None
    output_bucket: str | None
    output_prefix: str
