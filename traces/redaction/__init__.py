"""The privacy filter run before anything is persisted: PII and secrets -> typed placeholders."""

from traces.redaction.filter import FILTER_VERSION, PrivacyFilter, Redacted, RedactedConversation, Span

__all__ = ["FILTER_VERSION", "PrivacyFilter", "Redacted", "RedactedConversation", "Span"]
