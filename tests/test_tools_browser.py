"""The page shows tool calls, and end_call closes a WebRTC session: headless Chromium, the real service
and models, a fake microphone asking out loud; the LLM is a scripted OpenAI-compatible endpoint on
loopback and the weather tool a real HTTP service on loopback (bench/tool_servers.py)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from bench.tool_servers import ScriptedLLM, ToolHTTPServer, weather_tool
from tests.test_browser import CHROMIUM, OUTPUT_DIR, _require, chromium_args

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _questions(path, texts, rate=48000):
    from voice.audio import read_wav, write_wav

    parts = [np.zeros(3 * rate, np.float32)]
    for i, text in enumerate(texts):
        raw = path.with_suffix(f".{i}.wav")
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        parts += [read_wav(raw, rate) * 0.8, np.zeros(8 * rate, np.float32)]
    write_wav(path, np.concatenate(parts), rate)
    return path


def test_page_shows_tool_calls_and_end_call_closes_the_session(tmp_path):
    _require(CHROMIUM)
    _require("espeak-ng")
    from playwright.sync_api import sync_playwright

    from voice.runtime import Runtime
    from voice.service import BackgroundServer, create_app
    from voice.settings import ToolsSettings, load_settings

    wav = _questions(tmp_path / "q.wav", ["What is the weather in Paris?", "Thank you, goodbye."])
    base = load_settings()
    with ToolHTTPServer() as srv, ScriptedLLM() as llm:
        settings = base.model_copy(update={
            "data_dir": tmp_path / "data",
            "llm": base.llm.model_copy(update={"backend": "openai", "base_url": llm.url,
                                               "allowed_tools": ["get_weather", "end_call"]}),
            "tools": ToolsSettings(http=[weather_tool(srv.url)])})
        with BackgroundServer(create_app(settings, Runtime.load(settings))) as url, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chrome-profile"), executable_path=CHROMIUM, headless=True,
                args=chromium_args(wav), viewport={"width": 1100, "height": 800})
            try:
                page = context.new_page()
                page.goto(url + "/")
                page.click("#connect")
                try:
                    tool = page.locator("#transcript li.tool").filter(has_text="get_weather")
                    tool.first.wait_for(timeout=90_000)
                    page.wait_for_function(
                        "[...document.querySelectorAll('#transcript li.tool')].some(li => li.textContent.includes('sunny'))",
                        timeout=30_000)
                    page.locator("#transcript li.tool").filter(has_text="end_call").first.wait_for(timeout=90_000)
                    # end_call: the server closes the session; the page says so
                    page.wait_for_function("window.voiceApp.state === 'ended'", timeout=60_000)
                except Exception:
                    page.screenshot(path=str(OUTPUT_DIR / "browser-tools-failed.png"), full_page=True)
                    raise
                lines = page.locator("#transcript li").all_inner_texts()
                page.screenshot(path=str(OUTPUT_DIR / "browser-tools.png"), full_page=True)
                error = page.inner_text("#error")
            finally:
                context.close()
    print("\n".join(lines))
    weather = next(line for line in lines if "get_weather" in line)
    assert '{"city":"Paris"}' in weather and "sunny" in weather, weather
    assert any("the agent ended the call" in line for line in lines), lines
    assert "ended the session" in error and "the agent ended the call" in error, error
