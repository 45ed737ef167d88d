"""The domain's words have one home (exporter.model): the meeting path, the id rule, token names."""

from __future__ import annotations

import pytest

from exporter import appconfig, discovery, model, shard, webhooks
from exporter.config import TokenRef
from exporter.model import MeetingKey, meeting_path, parse_meeting_path


def test_a_meeting_path_reads_back_as_the_same_key():
    key = MeetingKey("023e105f4ecef8ad9ca31a8372d0c353", "app_1", "m-1")
    assert meeting_path(key) == "023e105f4ecef8ad9ca31a8372d0c353/app_1/m-1"
    assert parse_meeting_path(meeting_path(key)) == key


@pytest.mark.parametrize("text", ["", "a/b", "a/b/c/d", "a//c", "/b/c", "a/b/"])
def test_a_path_that_is_not_three_ids_is_refused_naming_it(text: str):
    with pytest.raises(ValueError, match="invalid meeting path"):
        parse_meeting_path(text)


def test_every_module_checks_ids_with_the_one_rule():
    assert appconfig.SAFE_ID is model.SAFE_ID
    assert discovery.SAFE_ID is model.SAFE_ID
    assert webhooks.SAFE_ID is model.SAFE_ID
    assert model.SAFE_ID.fullmatch("Ab_9-x") and not model.SAFE_ID.fullmatch("a/b")


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        (TokenRef("OTHER_TOKEN", None, "apps[0]"), "$OTHER_TOKEN"),
        (TokenRef(None, None, "api"), "$CLOUDFLARE_API_TOKEN"),
        (TokenRef(None, "/run/secrets/cf", "api"), "/run/secrets/cf"),
    ],
)
def test_a_token_is_named_the_same_by_the_config_and_the_shard_split(ref: TokenRef, name: str):
    assert str(ref) == name
    assert shard.token_name(ref.source) == name
