"""Rules that decide whether a follow-up question is asked (a task's `when:` in a job file).

A follow-up (`follows: TASK`) is asked after TASK's answer unless its rule says no. A rule reads
one earlier answer of the same conversation, TASK's by default, or that of another earlier turn
named by `task:`, and is one of:

    when: {contains: speech}                 # the answer, read as a list of tags, has this tag
    when: {contains: [speech, singing]}      # ... any one of these tags
    when: {matches: '\\bmusic'}              # the answer's text matches this regular expression
    when: {task: caption, matches: music}    # the rule on an earlier turn's answer (caption's)

`contains` splits the answer as the `events` column is split (at commas, semicolons, new lines and
" and "; special tokens, bullets and lead-ins such as "there is" removed) and compares whole tags, ignoring case: `speech` matches the tag
"Speech" but not "male speech". `matches` is Python's `re.search` over the answer's text (special
tokens removed), ignoring case. A follow-up whose rule fails is recorded as skipped, with the reason,
and its column is null; an answer that does not exist (its task was skipped) fails every rule.
No MindSpore here: the driver checks the rules, the engine evaluates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.tasks.parsers import split_list, strip_tokens

RULE_KEYS = ("contains", "matches", "task")


class RuleError(ValueError):
    """A `when:` rule that cannot be used; the message says why."""


@dataclass(frozen=True)
class Condition:
    contains: tuple[str, ...] = ()  # tags, any one of which the answer's list must hold
    matches: str | None = None  # a regular expression the answer's text must match
    task: str | None = None  # the earlier turn whose answer is read; None: the task followed

    @classmethod
    def parse(cls, value) -> Condition:
        """From a job file's mapping; raises RuleError."""
        if isinstance(value, Condition):
            return value
        if not isinstance(value, dict):
            raise RuleError(f"must be a mapping such as {{contains: speech}} or {{matches: music}}, got {value!r}")
        unknown = sorted(set(value) - set(RULE_KEYS))
        if unknown:
            raise RuleError(f"unknown key(s) {unknown}; a rule takes {list(RULE_KEYS)}")
        if ("contains" in value) == ("matches" in value):
            raise RuleError(f"needs exactly one of 'contains' (a tag or a list of tags) and 'matches' (a "
                            f"pattern), got {value!r}")
        on = value.get("task")
        if on is not None and not isinstance(on, str):
            raise RuleError(f"'task' names an earlier task, got {on!r}")
        if "contains" in value:
            tags = value["contains"]
            tags = [tags] if isinstance(tags, str) else tags
            if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
                raise RuleError(f"'contains' takes a tag or a list of tags, got {value['contains']!r}")
            return cls(contains=tuple(t.strip().casefold() for t in tags), task=on)
        pattern = value["matches"]
        if not isinstance(pattern, str) or not pattern:
            raise RuleError(f"'matches' takes a regular expression, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RuleError(f"'matches': {pattern!r} is not a regular expression: {exc}") from None
        return cls(matches=pattern, task=on)

    def describe(self, source: str) -> str:
        if self.contains:
            return f"{source} lists {' or '.join(self.contains)}"
        return f"{source} matches {self.matches!r}"

    def unmet(self, source: str, text: str) -> str | None:
        """None when the rule holds for this answer (of task `source`), else why it does not."""
        if self.contains:
            tags = {tag.casefold() for tag in split_list(text, tags=True)}
            if tags & set(self.contains):
                return None
        elif re.search(self.matches, strip_tokens(text), re.IGNORECASE):
            return None
        return f"when: {self.describe(source)}: no"

    def to_dict(self) -> dict:
        """As a job file writes it (run.json, the settings fingerprint)."""
        rule = {"contains": list(self.contains)} if self.contains else {"matches": self.matches}
        return {**rule, **({"task": self.task} if self.task else {})}
