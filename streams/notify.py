"""What the notifier says (agents/notify.py): aborts, release halts and verdicts that are not
the canary's fault, as Slack-compatible or plain JSON webhook payloads; and its pacing.

Pure: events in, payloads out; the rate limit and the retry schedule take the time as input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from streams.events import AbortCommand
from streams.promotion import VerdictSnapshot

SLACK, JSON = "slack", "json"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str  # abort | platform | stale | release_halt
    env: str
    title: str
    text: str
    link: str
    fields: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """One notice per kind, env and revision (`fields["pod_hash"]`)."""
        return f"{self.kind}:{self.env}@{self.fields.get('pod_hash', '')}"


def explain_link(base_url: str, env: str) -> str:
    """Where `canarywatch explain` for `env` can be read: the board's explain endpoint under
    `base_url`; without a base URL, the command to run."""
    if not base_url:
        return f"canarywatch explain {env}"
    return f"{base_url.rstrip('/')}/api/explain/{quote(env, safe='/')}"


def abort_notice(command: AbortCommand, base_url: str = "") -> Notice:
    e = command.evidence
    return Notice(
        kind="abort",
        env=command.env,
        title=f"canarywatch aborted {command.env} ({command.release or 'release ?'})",
        text=f"{command.reason}: {e.describe()}",
        link=explain_link(base_url, command.env),
        fields={
            "decision_id": command.decision_id,
            "pod_hash": command.pod_hash,
            "release": command.release,
            "reason": command.reason,
            "decided_at": command.decided_at,
            "evidence": {
                "signal": e.signal,
                "canary_bad": e.canary_bad,
                "canary_requests": e.canary_requests,
                "stable_bad": e.stable_bad,
                "stable_requests": e.stable_requests,
                "statistic": e.statistic,
                "threshold": e.threshold,
                "since_canary_start_s": e.since_canary_start_s,
            },
            "triage": command.extra.get("triage", ""),
        },
    )


def platform_notice(snapshot: VerdictSnapshot, base_url: str = "") -> Notice:
    """Stable fails as much as the canary: no abort is sent, and someone should know why."""
    failing = [
        f"{s.signal}: canary {s.canary_bad}/{s.canary_requests} bad, stable "
        f"{s.stable_bad}/{s.stable_requests} bad"
        for s, d in zip(snapshot.signals, snapshot.extra.get("decision", []), strict=False)
        if d == "platform"
    ]
    return Notice(
        kind="platform",
        env=snapshot.env,
        title=f"canarywatch holds off on {snapshot.env}: stable is failing too (platform)",
        text="Not the canary's fault, so no abort is sent. " + "; ".join(failing),
        link=explain_link(base_url, snapshot.env),
        fields={"pod_hash": snapshot.pod_hash, "release": snapshot.release},
    )


def release_halt_notice(release: str, detail: dict[str, Any], base_url: str = "") -> Notice:
    """The hook for a `<prefix>.releases` topic (a release halted across environments)."""
    return Notice(
        kind="release_halt",
        env=release,
        title=f"canarywatch halted release {release}",
        text=str(detail.get("reason", "")),
        link=base_url or "canarywatch status --release " + release,
        fields={"release": release, **detail},
    )


def payload(notice: Notice, fmt: str) -> dict[str, Any]:
    if fmt == JSON:
        return {
            "kind": notice.kind,
            "env": notice.env,
            "title": notice.title,
            "text": notice.text,
            "explain": notice.link,
            **notice.fields,
        }
    link = f"<{notice.link}|explain>" if notice.link.startswith("http") else notice.link
    return {
        "text": f"{notice.title}: {notice.text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": notice.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": notice.text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": link}]},
        ],
    }


@dataclass(slots=True)
class TokenBucket:
    """At most `rate_per_s` on average, bursts of `burst`."""

    rate_per_s: float
    burst: float
    tokens: float = math.nan
    at: float = math.nan

    def wait_s(self, now: float) -> float:
        """Seconds until one token is there (0: take it now, and it is taken)."""
        if math.isnan(self.tokens):
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Delay before retry number `attempt` (1, 2, ...): doubling from `base_s`, capped."""
    return float(min(cap_s, base_s * 2 ** (attempt - 1)))
