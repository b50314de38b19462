"""The /-/eventsink status pages: permissions, counts, no secrets, replay."""

from __future__ import annotations

import pytest

from eventsink.datasette.plugin import get_pipeline

from .test_datasette_plugin import _db, sender, write


def cookies(datasette, actor_id: str = "root") -> dict[str, str]:
    return {"ds_actor": datasette.client.actor_cookie({"id": actor_id})}


class TestPermissions:
    """Only actors with eventsink-view see the pages; anonymous users get 403."""

    @pytest.mark.parametrize("path", ["/-/eventsink", "/-/eventsink.json"])
    async def test_anonymous_and_unprivileged_get_403(self, tmp_path, receiver, path):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            assert (await datasette.client.get(path)).status_code == 403
            response = await datasette.client.get(path, cookies=cookies(datasette, "bob"))
            assert response.status_code == 403

    async def test_permission_can_be_granted_in_config(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            datasette.config["permissions"] = {"eventsink-view": {"id": "bob"}}
            response = await datasette.client.get(
                "/-/eventsink.json", cookies=cookies(datasette, "bob")
            )
            assert response.status_code == 200


class TestStatus:
    """Root sees per-sink counts and errors, never the token."""

    async def test_counts_for_root(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            assert await get_pipeline(datasette).flush(timeout=10)
            response = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
        assert response.status_code == 200
        sink = response.json()["sinks"]["datasette"]
        assert (sink["delivered"], sink["pending"], sink["in_flight"]) == (2, 0, 0)
        assert sink["last_success_at"] and sink["paused"] is None and sink["rate"] > 0
        assert receiver.token not in response.text
        assert html.status_code == 200 and "<h1>eventsink status</h1>" in html.text
        assert "Delivered since start" in html.text and receiver.token not in html.text

    async def test_paused_sink_shows_the_error_not_the_token(self, tmp_path, receiver):
        token = receiver.create_token("root", "--all", "view-instance")
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": token,
            "pause_interval": 0.05,
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            pipeline = get_pipeline(datasette)
            assert not await pipeline.flush(timeout=0.3)
            response = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
            await pipeline.close(timeout=0)
        sink = response.json()["sinks"]["datasette"]
        assert sink["paused"] and sink["last_error"]["status"] == 403
        assert "create-table" in sink["last_error"]["message"]
        assert token not in response.text and token not in html.text
        assert "Paused:" in html.text

    async def test_not_configured(self, tmp_path):
        async with sender(tmp_path, {}) as datasette:
            response = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
        assert response.json() == {"active": False, "config_source": None, "sinks": {}}


class TestReplay:
    """Dead letters are listed and replayed by a POST that needs eventsink-replay."""

    async def test_replay_button(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.url}/missing/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            pipeline = get_pipeline(datasette)
            assert await pipeline.flush(timeout=10)
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
            assert "Replay 2 dead letter(s)" in html.text and "/-/eventsink/replay" in html.text
            status = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            assert len(status.json()["sinks"]["datasette"]["recent_dead_letters"]) == 2

            denied = await datasette.client.post(
                "/-/eventsink/replay", data={"sink": "datasette"}, cookies=cookies(datasette, "bob")
            )
            assert denied.status_code == 403
            cross_site = await datasette.client.post(
                "/-/eventsink/replay",
                data={"sink": "datasette"},
                cookies=cookies(datasette),
                headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
            )
            assert cross_site.status_code == 403
            assert pipeline.lanes["datasette"].stats.dead_lettered == 2

            replayed = await datasette.client.post(
                "/-/eventsink/replay", data={"sink": "datasette"}, cookies=cookies(datasette)
            )
            assert replayed.status_code == 302
            assert await pipeline.flush(timeout=10)
            # the database is still missing, so both come back as dead letters again
            assert pipeline.lanes["datasette"].stats.dead_lettered == 4
