"""The /-/eventsink status pages: permissions, counts, no secrets, replay."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from eventsink.datasette.plugin import get_pipeline
from eventsink.testing import async_wait_until, wait_until
from eventsink.testing.receiver import DatasetteReceiver

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

    @pytest.mark.slow  # Datasette takes seconds (3-8 s here) to answer 404 for a missing database
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


class TestOverview:
    """Each sink has a state, its last hour and dead letters grouped by error."""

    async def test_state_and_series_in_json(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            pipeline = get_pipeline(datasette)
            assert await pipeline.flush(timeout=10)
            pipeline._sample_history()
            response = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
        sink = response.json()["sinks"]["datasette"]
        assert sink["state"] == "ok"
        series = sink["series"]
        assert series["step"] == 30 and len(series["delivered"]) == 120
        assert sum(series["delivered"]) == 2 and sum(series["failed"]) == 0
        assert len(response.content) < 20_000  # the series is a few KB
        assert 'class="es-badge es-ok"' in html.text
        assert '<svg class="eventsink-chart"' in html.text and "bar-delivered" in html.text
        assert "eventsink-overview" in html.text

    async def test_paused_sink_events_are_waiting_not_in_flight(self, tmp_path, receiver):
        token = receiver.create_token("root", "--all", "view-instance")
        config = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": token,
            "pause_interval": 30,
        }
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            pipeline = get_pipeline(datasette)
            await async_wait_until(lambda: pipeline.lanes["datasette"].paused)
            response = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
            await pipeline.close(timeout=0)
        sink = response.json()["sinks"]["datasette"]
        assert sink["state"] == "paused" and sink["pending"] + sink["in_flight"] == 2
        assert 'class="es-badge es-paused"' in html.text
        assert "waiting for the sink to be unpaused" in html.text
        assert "In flight" not in html.text and "being sent now" not in html.text

    @pytest.mark.slow  # Datasette takes seconds (3-8 s here) to answer 404 for a missing database
    async def test_dead_letters_grouped_and_replayed_by_group(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.url}/missing/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            await write(datasette, f"/{_db(datasette)}/x/-/insert", {"rows": [{"a": 2}]})
            pipeline = get_pipeline(datasette)
            assert await pipeline.flush(timeout=10)
            status = await datasette.client.get("/-/eventsink.json", cookies=cookies(datasette))
            html = await datasette.client.get("/-/eventsink", cookies=cookies(datasette))
            groups = status.json()["sinks"]["datasette"]["dead_letter_groups"]
            assert [group["count"] for group in groups] == [3]
            assert "3 of 3" in html.text and "Replay 3 dead letter(s)" in html.text

            other = await datasette.client.post(
                "/-/eventsink/replay",
                data={"sink": "datasette", "status": "", "error": "not this error"},
                cookies=cookies(datasette),
            )
            assert other.status_code == 302
            destination = pipeline.lanes["datasette"].destination  # the outbox's key
            assert (await pipeline.outbox.backlog())[destination].dead_letters == 3
            group = groups[0]
            replayed = await datasette.client.post(
                "/-/eventsink/replay",
                data={
                    "sink": "datasette",
                    "status": str(group["status"] or ""),
                    "error": group["error"],
                },
                cookies=cookies(datasette),
            )
            assert replayed.status_code == 302
            assert await pipeline.flush(timeout=10)
            assert pipeline.lanes["datasette"].stats.dead_lettered == 6


class TestMenuAndMetrics:
    """A menu link for those who may view; Prometheus metrics behind eventsink-view."""

    async def test_menu_link_only_for_viewers(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            root = await datasette.client.get("/", cookies=cookies(datasette))
            bob = await datasette.client.get("/", cookies=cookies(datasette, "bob"))
        assert "eventsink delivery status" in root.text
        assert "eventsink delivery status" not in bob.text

    async def test_metrics_in_process(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            await write(datasette, f"/{_db(datasette)}/-/create", {"table": "x", "row": {"a": 1}})
            assert await get_pipeline(datasette).flush(timeout=10)
            anonymous = await datasette.client.get("/-/eventsink/metrics")
            response = await datasette.client.get(
                "/-/eventsink/metrics", cookies=cookies(datasette)
            )
        assert anonymous.status_code == 403
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'eventsink_events_delivered_total{sink="datasette"} 2' in response.text
        assert "eventsink_events_accepted_total 2" in response.text
        assert receiver.token not in response.text


@pytest.mark.slow
class TestMetricsOnAServedSender:
    """A real ``datasette serve`` sender: a Bearer token reads the metrics, anonymous gets 403."""

    def test_curl_with_bearer_token(self, tmp_path, receiver):
        config = tmp_path / "sender.json"
        table = f"metrics_{uuid.uuid4().hex[:6]}"
        config.write_text(
            json.dumps(
                {
                    "plugins": {
                        "eventsink": {
                            "api_url": f"{receiver.db_url}/-/create",
                            "api_token": receiver.token,
                            "table": table,
                        }
                    }
                }
            )
        )
        extra = ["-c", str(config), "--internal", str(tmp_path / "internal.db")]
        with DatasetteReceiver(database="s", extra_args=extra) as served:
            token = served.token
            headers = {"Authorization": f"Bearer {token}"}
            created = httpx.post(
                f"{served.db_url}/-/create",
                json={"table": "t", "rows": [{"n": n} for n in range(5)]},
                headers=headers,
            )
            assert created.status_code == 201, created.text
            for n in range(3):
                inserted = httpx.post(
                    f"{served.db_url}/t/-/insert", json={"row": {"n": 10 + n}}, headers=headers
                )
                assert inserted.status_code == 201, inserted.text
            # create-table, insert-rows for its rows, and one insert-rows per insert
            expected = 5
            try:
                wait_until(lambda: len(receiver.rows(table)) == expected, timeout=20)
            except TimeoutError:
                raise AssertionError(
                    f"{[r['event'] for r in receiver.rows(table)]}\n{served.log_path.read_text()}"
                ) from None

            def metrics() -> str:
                return httpx.get(f"{served.url}/-/eventsink/metrics", headers=headers).text

            wait_until(
                lambda: (
                    f'eventsink_events_delivered_total{{sink="datasette"}} {expected}' in metrics()
                ),
                timeout=10,
            )
            assert httpx.get(f"{served.url}/-/eventsink/metrics").status_code == 403
            text = metrics()
        assert 'eventsink_pending_events{sink="datasette"} 0' in text
        assert 'eventsink_send_duration_seconds_count{sink="datasette"}' in text
        assert receiver.token not in text and token not in text


class TestReplayForm:
    """A replay form with a status that is not a number replays nothing and fails nothing."""

    async def test_odd_status(self, tmp_path, receiver):
        config = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
        async with sender(tmp_path, {"eventsink": config}) as datasette:
            response = await datasette.client.post(
                "/-/eventsink/replay",
                data={"sink": "datasette", "status": "four-oh-four", "error": "x"},
                cookies=cookies(datasette),
            )
        assert response.status_code == 302
