"""The pools, jobs, buckets, users and nodes pages, in chromium against the session's cluster:
browse a bucket, download, upload and delete; the job page draws its dependency graph; the
owner's pages are hidden from and refused to other users; every page fits a phone's width.
Screenshots at 1280×800 go to docs/_static/console/ (docs/console.rst shows them)."""
from __future__ import annotations

import io
import secrets
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from tests.console.conftest import PHONE, shot
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def api(console_server, owner_token):
    with httpx.Client(base_url=console_server.url, headers={"Authorization": owner_token},
                      timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def conn(console_server):
    return console_server.connection()


@pytest.fixture(scope="module")
def bucket(conn) -> tuple[str, bytes]:
    """An owner's bucket with a folder and a binary file; returns its name and the file's bytes."""
    name = f"console-{secrets.token_hex(4)}"
    body = secrets.token_bytes(200_000)
    made = conn.create_bucket(name)
    made.add_file(io.BytesIO(body), "data.bin")
    made.add_file(io.BytesIO(b"read me\n"), "docs/readme.txt")
    made.add_file(io.BytesIO(b"old\n"), "docs/old/note.txt")
    return name, body


@pytest.fixture(scope="module")
def diamond_job(api) -> tuple[str, list[str]]:
    """A job of four tasks: top, then left and right, then bottom."""
    job = api.post("/jobs", json={"name": "diamond", "useDependencies": True}).json()["uuid"]

    def task(name: str, parents: list[str]) -> str:
        doc = {"name": name, "profile": "docker-batch", "jobUuid": job,
               "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
        if parents:
            doc["dependencies"] = {"dependsOn": parents}
        answer = api.post("/tasks", json=doc)
        assert answer.status_code == 201, answer.text
        return answer.json()["uuid"]

    top = task("top", [])
    left, right = task("left", [top]), task("right", [top])
    return job, [top, left, right, task("bottom", [left, right])]


@pytest.fixture(scope="module")
def user_token(api) -> str:
    """A user who is not the owner (added on this unsandboxed test cluster)."""
    answer = api.post("/admin/users", json={"email": f"carol{secrets.token_hex(3)}@example.org",
                                            "allowUnsandboxed": True})
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


@pytest.fixture
def user_page(new_context, user_token):
    page = new_context().new_page()
    page.goto("/console/login")
    page.fill("#token", user_token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/tasks")
    return page


def test_browse_a_bucket_into_a_folder_and_back(console_page, bucket):
    name, _ = bucket
    page = console_page
    page.goto("/console/buckets")
    page.click(f"#bucket-list a:text-is('{name}')")
    page.wait_for_url(f"**/console/buckets/{name}")
    assert page.locator("h1").inner_text() == f"Bucket {name}"
    assert page.locator("#objects tr[data-folder='docs/']").count() == 1
    assert page.locator("#objects tr[data-key='data.bin'] td.num").inner_text() == "195.3 KiB"
    page.click("#objects tr[data-folder='docs/'] a")
    page.wait_for_url(lambda url: url.endswith("?prefix=docs/"))
    assert page.locator("#objects tr[data-key='docs/readme.txt']").count() == 1
    assert page.locator("#objects tr[data-folder='docs/old/']").count() == 1
    page.click(f".crumbs a:text-is('{name}')")
    page.wait_for_url(f"**/console/buckets/{name}")
    assert page.locator("#objects tr[data-key='data.bin']").count() == 1


def test_download_a_file_gets_its_bytes(console_page, bucket, tmp_path):
    name, body = bucket
    page = console_page
    page.goto(f"/console/buckets/{name}")
    with page.expect_download() as info:
        page.click("#objects tr[data-key='data.bin'] a.download")
    download = info.value
    assert download.suggested_filename == "data.bin"
    saved = tmp_path / "got.bin"
    download.save_as(saved)
    assert saved.read_bytes() == body


def test_upload_a_file_then_delete_it(console_page, bucket, conn, tmp_path):
    name, _ = bucket
    local = tmp_path / "upload me.txt"
    local.write_bytes(b"uploaded from the console\n" * 1000)
    page = console_page
    page.goto(f"/console/buckets/{name}?prefix=docs/")
    page.set_input_files("#upload-file", str(local))
    page.click("form.upload button[type=submit]")
    row = page.locator("#objects tr[data-key='docs/upload me.txt']")
    row.wait_for()
    assert page.url.endswith("/console/buckets/" + name + "?prefix=docs%2F")
    remote = conn.retrieve_bucket(name)
    assert remote.get_file("docs/upload me.txt", str(tmp_path / "back.txt")) is not None
    assert (tmp_path / "back.txt").read_bytes() == local.read_bytes()
    row.locator("button:text-is('Delete')").click()
    expect(page.locator("#objects tr[data-key='docs/upload me.txt']")).to_have_count(0)
    expect(page.locator("#objects tr[data-key='docs/readme.txt']")).to_have_count(1)
    assert "docs/upload me.txt" not in [o.key for o in remote.list_files()]


def test_an_upload_past_the_apis_request_limit_streams_as_a_put(console_page, bucket, conn,
                                                                tmp_path):
    """20 MiB, past the API's 16 MiB request limit: console.js PUTs the file's bytes, which
    the server streams to S3 (a multipart upload)."""
    name, _ = bucket
    local = tmp_path / "big.bin"
    local.write_bytes(secrets.token_bytes(20 * 2**20))
    page = console_page
    sent = []
    page.on("request", lambda r: sent.append((r.method, r.url)) if "/upload" in r.url else None)
    page.goto(f"/console/buckets/{name}?prefix=docs/")
    page.set_input_files("#upload-file", str(local))
    page.click("form.upload button[type=submit]")
    page.locator("#objects tr[data-key='docs/big.bin']").wait_for(timeout=60_000)
    assert [method for method, _ in sent] == ["PUT"]
    assert "name=big.bin" in sent[0][1] and "prefix=docs%2F" in sent[0][1]
    assert page.locator("#objects tr[data-key='docs/big.bin'] td.num").inner_text() == "20.0 MiB"
    remote = conn.retrieve_bucket(name)
    remote.get_file("docs/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    remote.delete_file("docs/big.bin")


def test_delete_a_folder_deletes_what_it_holds(console_page, conn):
    name = f"console-{secrets.token_hex(4)}"
    made = conn.create_bucket(name)
    for key in ("keep.txt", "drop/a.txt", "drop/deeper/b.txt"):
        made.add_file(io.BytesIO(b"x"), key)
    page = console_page
    page.goto(f"/console/buckets/{name}")
    page.locator("#objects tr[data-folder='drop/'] button").click()
    expect(page.locator("#objects tr[data-folder='drop/']")).to_have_count(0)
    expect(page.locator("#objects tr[data-key='keep.txt']")).to_have_count(1)
    assert [o.key for o in made.list_files()] == ["keep.txt"]


def test_a_user_sees_only_its_buckets_and_is_refused_anothers(user_page, bucket):
    name, _ = bucket
    user_page.goto("/console/buckets")
    assert user_page.locator(f"#bucket-list tr[data-bucket='{name}']").count() == 0
    for path in (f"/console/buckets/{name}", f"/console/buckets/{name}/download?key=data.bin"):
        answer = user_page.goto(path)
        assert answer.status == 403
        assert "is not yours" in user_page.locator(".flash.error").inner_text()


def test_the_job_page_draws_one_node_per_task_and_its_edges(console_page, diamond_job):
    job, tasks = diamond_job
    page = console_page
    page.goto("/console/jobs")
    page.click(f"#job-list tr[data-uuid='{job}'] a")
    page.wait_for_url(f"**/console/jobs/{job}")
    svg = page.locator("#job-graph svg")
    assert sorted(svg.locator("a.graph-node").evaluate_all(
        "nodes => nodes.map(n => n.dataset.uuid)")) == sorted(tasks)
    assert svg.locator("path[marker-end]").count() == 4
    # parents above children: top's box above left's and right's, which are above bottom's
    y = {u: svg.locator(f"a.graph-node[data-uuid='{u}'] rect").bounding_box()["y"]
         for u in tasks}
    top, left, right, bottom = tasks
    assert y[top] < y[left] == y[right] < y[bottom]
    assert page.locator("#job-tasks tr[data-uuid]").count() == 4


def test_terminate_then_delete_a_job(console_page, api):
    job = api.post("/jobs", json={"name": "to-stop"}).json()["uuid"]
    answer = api.post("/tasks", json={"name": "sleeper", "profile": "docker-batch",
                                      "jobUuid": job, "constants": [
                                          {"key": "DOCKER_CMD", "value": "sleep 300"}]})
    assert answer.status_code == 201, answer.text
    page = console_page
    page.goto(f"/console/jobs/{job}")
    with page.expect_navigation():
        page.click("button:text-is('Terminate')")
    wait_for(lambda: api.get(f"/jobs/{job}").json()["state"] == "Completed", timeout=30)
    page.reload()
    assert page.locator(".facts .state").first.inner_text() == "Completed"
    page.click("button:text-is('Delete')")
    page.wait_for_url("**/console/jobs")
    assert api.get(f"/jobs/{job}").status_code == 404


def test_a_pool_page_then_close_and_delete(console_page, api):
    answer = api.post("/pools", json={"name": "console-pool", "profile": "docker-batch",
                                      "instanceCount": 1, "tags": ["render"]})
    assert answer.status_code == 201, answer.text
    pool = answer.json()["uuid"]
    wait_for(lambda: api.get(f"/pools/{pool}").json()["state"] == "FullyExecuting", timeout=30)
    page = console_page
    page.goto("/console/pools")
    row = page.locator(f"#pool-list tr[data-uuid='{pool}']")
    assert row.locator(".tag").inner_text() == "render"
    assert row.locator("td.num").first.inner_text() == "1 / 1"
    row.locator("a").click()
    page.wait_for_url(f"**/console/pools/{pool}")
    expect(page.locator("#pool-slots tbody tr")).to_have_count(1)
    assert "Not elastic" in page.locator("main").inner_text()
    with page.expect_navigation():
        page.click("button:text-is('Close')")
    wait_for(lambda: api.get(f"/pools/{pool}").json()["state"] == "Closed", timeout=30)
    page.click("button:text-is('Delete')")
    page.wait_for_url("**/console/pools")
    assert wait_for(lambda: api.get(f"/pools/{pool}").status_code == 404, timeout=30)


def test_owner_pages_are_hidden_from_and_refused_to_a_user(user_page):
    nav = user_page.locator("header nav").inner_text()
    assert "Buckets" in nav and "Users" not in nav and "Nodes" not in nav
    for path in ("/console/users", "/console/nodes"):
        answer = user_page.goto(path)
        assert answer.status == 403
        assert "only the cluster owner" in user_page.locator(".flash.error").inner_text()


def test_the_owner_sees_users_and_nodes(console_page, user_token, console_server, api):
    page = console_page
    page.goto("/console/users")
    emails = page.locator("#user-list tr[data-email]").evaluate_all(
        "rows => rows.map(r => r.dataset.email)")
    assert "owner@qcompute.local" in emails and any(e.startswith("carol") for e in emails)
    pool = api.post("/pools", json={"name": "idle", "profile": "docker-batch",
                                    "instanceCount": 1}).json()["uuid"]
    try:
        wait_for(lambda: api.get(f"/pools/{pool}").json()["state"] == "FullyExecuting", 30)
        page.goto("/console/nodes")
        node = httpx.get(f"{console_server.url}/health").json()["nodes"][0]
        cells = page.locator("#node-list tbody tr").first.locator("td").all_inner_texts()
    finally:
        api.delete(f"/pools/{pool}")
    assert cells[1] == str(node["cores"])
    # the idle pool's slot is held, not free
    assert node["heldSlots"] >= 1 and node["freeSlots"] <= node["slots"] - node["heldSlots"]
    assert cells[-2:] == [f"{node['freeSlots']} / {node['slots']}", str(node["heldSlots"])]
    assert page.locator("#health").inner_text().count("ok") >= 4


def test_every_page_fits_a_phone_and_is_shot_at_1280x800(new_context, signed_in_state, bucket,
                                                        diamond_job, api):
    desktop = new_context(storage_state=signed_in_state).new_page()
    phone = new_context(storage_state=signed_in_state, viewport=PHONE).new_page()
    pool = api.post("/pools", json={"name": "renders", "profile": "docker-batch",
                                    "instanceCount": 1, "tags": ["demo"]}).json()["uuid"]
    try:
        api.post("/tasks", json={"name": "frame-1", "profile": "docker-batch", "poolUuid": pool,
                                 "constants": [{"key": "DOCKER_CMD", "value": "true"}]})
        shown = {"pools": "/console/pools", "pool": f"/console/pools/{pool}",
                 "jobs": "/console/jobs", "job": f"/console/jobs/{diamond_job[0]}",
                 "buckets": "/console/buckets", "bucket": f"/console/buckets/{bucket[0]}",
                 "users": "/console/users", "nodes": "/console/nodes"}
        for name, path in shown.items():
            assert desktop.goto(path).status == 200, path
            if name != "users":  # test_users.py shoots it with a new user's token shown
                shot(desktop, f"{name}.png")
            assert phone.goto(path).status == 200, path
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{path} is {width} px wide on a phone"
    finally:
        api.delete(f"/pools/{pool}")


def test_a_missing_object_or_job_is_a_404_page(console_page, bucket):
    name, _ = bucket
    answer = console_page.goto(f"/console/buckets/{name}/download?key=nope")
    assert answer.status == 404
    assert "no object 'nope'" in console_page.locator(".flash.error").inner_text()
    assert console_page.goto(f"/console/jobs/{uuid.uuid4()}").status == 404
