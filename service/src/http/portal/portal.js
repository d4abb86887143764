// The webhook portal's only script: copy the new secret with one click, and follow the state
// of deliveries on their way without reloading. The pages work without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const input = document.getElementById(button.dataset.copy);
    if (!input) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(input.value);
      } catch (_) {
        input.focus();
        input.select();
        document.execCommand("copy");
      }
      button.textContent = "Copied";
    });
  }

  // Rows of pending or leased deliveries carry the URL of their state; poll each for a while.
  const rows = Array.from(document.querySelectorAll("tr[data-state-url]")).slice(0, 10);
  const deadline = Date.now() + 120000;
  const poll = async (row) => {
    try {
      const answer = await fetch(row.dataset.stateUrl, { headers: { accept: "application/json" } });
      if (!answer.ok) return;
      const d = await answer.json();
      const state = row.querySelector("[data-field=state]");
      state.textContent = d.state;
      state.className = "state state-" + d.state;
      row.querySelector("[data-field=attempts]").textContent = String(d.attempt_count);
      row.querySelector("[data-field=status]").textContent =
        d.status_code === null ? "\u2013" : String(d.status_code);
      if (d.state === "delivered" || d.state === "failed") return;
    } catch (_) {
      // A network hiccup: try again at the next tick.
    }
    if (Date.now() < deadline) setTimeout(() => poll(row), 1000);
  };
  for (const row of rows) setTimeout(() => poll(row), 500);
});
