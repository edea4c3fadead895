"""Two CSRs, two dashboards: one joins the other's session as an assistant (Chromium)."""

from __future__ import annotations

from pathlib import Path

from tests.browser import chromium, close_to, dashboard_agent, settles, shot
from tests.procs import Proc, start_signal_server

WAIT_MS = 30_000


def test_an_assistant_joins_from_the_dashboard_and_chats(procs: list[Proc], tmp_path: Path) -> None:
    signal_proc, signal = start_signal_server()
    procs.append(signal_proc)
    carol, carol_url = dashboard_agent(tmp_path / "carol", signal, name="Carol")
    procs.append(carol)
    dan, dan_url = dashboard_agent(tmp_path / "dan", signal, name="Dan")
    procs.append(dan)
    with chromium() as browser:
        ctx = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        ctx.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=carol_url.split("/?")[0]
        )
        try:
            primary = ctx.new_page()
            primary.set_default_timeout(WAIT_MS)
            primary.goto(carol_url)
            primary.click("#start-first")
            primary.wait_for_function(
                "/^[0-9]{4}-/.test(document.getElementById('invite-code').textContent)"
            )
            primary.click("#copy-csr-code")
            csr_code = primary.evaluate("navigator.clipboard.readText()")
            assert csr_code != primary.text_content("#invite-code")

            helper = ctx.new_page()
            helper.set_default_timeout(WAIT_MS)
            helper.goto(dan_url + "#join")  # what the tray's "Join as assistant…" opens
            helper.wait_for_selector("#join-dialog:not([hidden])")
            helper.fill("#join-code", csr_code)
            helper.click("#join-form button[type=submit]")

            primary.wait_for_selector("#asking :text('Dan asks to assist')")
            shot(primary, "assistant-01-asks")
            primary.click("#asking button:has-text('Admit')")
            helper.wait_for_selector(".session-tab:has-text('Assisting Carol')")
            helper.wait_for_selector("#participants li:has-text('Carol')")
            primary.wait_for_selector("#participants li:has-text('Dan')")
            assert helper.is_hidden("#card-invite")
            assert helper.is_disabled("#request-control")  # control comes by transfer

            helper.fill("#chat-input", "Dan here, I can take over the printer part.")
            helper.click("#chat-send")
            primary.wait_for_selector("#chat-log :text('Dan here, I can take over')")
            primary.fill("#chat-input", "Thanks Dan.")
            primary.click("#chat-send")
            helper.wait_for_selector("#chat-log :text('Thanks Dan.')")
            shot(helper, "assistant-02-assisting")

            # several sessions at once, one tab each
            primary.click("#new-session")
            primary.wait_for_function(
                "document.querySelectorAll('.session-tab').length === 2 && "
                "document.querySelector('.session-tab.active').dataset.sid === 's2' && "
                "/^[0-9]{4}-/.test(document.getElementById('invite-code').textContent)"
            )
            second = primary.text_content("#invite-code")
            primary.click(".session-tab[data-sid=s1]")
            primary.wait_for_function(
                f"document.getElementById('invite-code').textContent !== '{second}'"
            )
            assert primary.locator("#participants li:has-text('Dan')").count() == 1
            primary.click(".session-tab[data-sid=s2]")
            assert primary.text_content("#invite-code") == second
            assert primary.locator("#participants li:has-text('Dan')").count() == 0
            primary.click(".session-tab[data-sid=s1]")

            helper.click(".tab[data-tab=session]")
            assert helper.text_content("#end-session") == "Leave session"
            helper.click("#end-session")
            primary.wait_for_selector("#activity :text('Dan left')")
            helper.wait_for_selector(".session-tab.ended")
        finally:
            ctx.close()


def test_an_assistant_sees_the_customers_screen_in_its_dashboard(
    procs: list[Proc], tmp_path: Path
) -> None:
    """The assistant asks the customer itself for the screen, over their direct link;
    the customer's prompt names the assistant; the assistant's page shows the screen."""
    from agent.capture.xvfb import Canvas
    from tests.desktop import xvfb

    colours = {(0, 0): (220, 30, 30), (1, 0): (30, 180, 40), (0, 1): (40, 60, 220)}
    signal_proc, signal = start_signal_server()
    procs.append(signal_proc)
    with xvfb(1280, 800) as display:
        canvas = Canvas(display)
        try:
            for (qx, qy), rgb in colours.items():
                canvas.fill(qx * 640, qy * 400, 640, 400, rgb)
            canvas.fill(640, 400, 640, 400, (240, 200, 20))
            canvas.sync()
            carol = Proc(
                ["agent", "start", "--headless", "--json", "--signal", signal, "--name", "Carol"],
                home=tmp_path / "carol",
                name="primary",
            )
            procs.append(carol)
            session = carol.expect("session")
            cust = Proc(
                ["agent", "join", session["link"], "--headless", "--json", "--name", "Alice"],
                home=tmp_path / "alice",
                name="customer",
                env={"DISPLAY": display},
            )
            procs.append(cust)
            cust.expect("joined")
            dan, dan_url = dashboard_agent(tmp_path / "dan", signal, name="Dan")
            procs.append(dan)
            with chromium() as browser:
                ctx = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
                try:
                    page = ctx.new_page()
                    page.set_default_timeout(WAIT_MS)
                    page.goto(dan_url + "#join")
                    page.wait_for_selector("#join-dialog:not([hidden])")
                    page.fill("#join-code", session["csr_code"])
                    page.click("#join-form button[type=submit]")
                    asking = carol.expect("assistant_request", timeout=30)
                    carol.send({"cmd": "admit", "peer": asking["peer"]})
                    page.wait_for_selector("#participants li:has-text('Alice')")
                    cust.expect("direct", timeout=30)

                    page.click(".tab[data-tab=desktop]")
                    assert page.is_disabled("#request-control")  # control comes by transfer
                    page.wait_for_function("!document.getElementById('request-view').disabled")
                    page.click("#request-view")
                    prompt = cust.expect("request", lambda e: e["cap"] == "view")
                    assert prompt["name"] == "Dan" and prompt["from"] == asking["peer"]
                    cust.send({"cmd": "grant", "id": prompt["id"]})
                    page.wait_for_function(
                        "Number(document.getElementById('screen').dataset.frames || 0) >= 3"
                    )
                    for (qx, qy), rgb in colours.items():  # a still screen refines
                        got = settles(page, 0.25 + 0.5 * qx, 0.25 + 0.5 * qy, rgb)
                        assert close_to(got, rgb), ((qx, qy), got, rgb)
                    shot(page, "assistant-03-sees-the-screen")
                finally:
                    ctx.close()
        finally:
            canvas.close()
