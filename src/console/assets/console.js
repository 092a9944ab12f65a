// sandgate console: sign-in and sign-out (JSON posts, as the server's guard asks),
// issuing and revoking personal keys, and live numbers on the overview (server-sent
// events). Pages work without it, except signing in and managing keys.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const signIn = document.getElementById("sign-in");
  if (signIn) {
    signIn.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("sign-in-error");
      error.textContent = "";
      const response = await fetch("/ui/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ key: document.getElementById("key").value }),
        credentials: "same-origin",
      });
      if (response.ok) {
        location.assign("/ui");
      } else {
        error.textContent = "That key was not accepted.";
        document.getElementById("key").focus();
      }
    });
  }
  const signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", async () => {
      await fetch("/ui/logout", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
      location.assign("/ui/login");
    });
  }
  const newKey = document.getElementById("new-key");
  if (newKey) {
    newKey.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("new-key-error");
      error.textContent = "";
      const name = document.getElementById("key-name").value.trim();
      const request = { expires_in_s: Number(document.getElementById("key-lifetime").value) };
      if (name) request.name = name;
      const response = await fetch("/ui/keys", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(request),
        credentials: "same-origin",
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) {
        document.getElementById("new-key-secret").value = answer.key;
        document.getElementById("new-key-made").hidden = false;
        document.getElementById("new-key-secret").select();
      } else {
        error.textContent = answer.error || "The key was not created.";
      }
    });
  }
  document.querySelectorAll("button.revoke-key").forEach((button) => {
    button.addEventListener("click", async () => {
      const response = await fetch("/ui/keys/" + encodeURIComponent(button.dataset.key), {
        method: "DELETE",
        credentials: "same-origin",
      });
      if (response.ok) location.reload();
      else button.textContent = "Not revoked";
    });
  });
  const decide = document.getElementById("decide");
  if (decide) {
    decide.querySelectorAll("button.decide").forEach((button) => {
      button.addEventListener("click", async () => {
        const error = document.getElementById("decide-error");
        error.textContent = "";
        const request = { decision: button.dataset.decision };
        const reason = document.getElementById("decision-reason").value.trim();
        if (reason) request.reason = reason;
        const response = await fetch("/ui/approvals/" + encodeURIComponent(decide.dataset.approval), {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(request),
          credentials: "same-origin",
        });
        if (response.ok) location.reload();
        else {
          const answer = await response.json().catch(() => ({}));
          error.textContent = answer.error || "The decision was not taken.";
        }
      });
    });
  }
  const live = document.querySelector("[data-live]");
  if (live && window.EventSource) {
    const source = new EventSource(live.dataset.live);
    const set = (id, value) => {
      const element = document.getElementById(id);
      if (element) element.textContent = String(value);
    };
    source.addEventListener("pulse", (event) => {
      const pulse = JSON.parse(event.data);
      set("pulse-executions", pulse.executions);
      set("pulse-errors", pulse.errors);
      set("pulse-p50", pulse.p50_ms);
      set("pulse-p99", pulse.p99_ms);
      set("live-at", "as of " + pulse.at + " (live)");
      const bars = document.querySelectorAll("#per-minute rect");
      const max = Math.max(1, ...pulse.per_minute);
      bars.forEach((bar, i) => {
        const value = pulse.per_minute[i] || 0;
        const height = (value / max) * 180;
        bar.setAttribute("y", (180 - height).toFixed(1));
        bar.setAttribute("height", height.toFixed(1));
        const title = bar.querySelector("title");
        if (title) title.textContent = (59 - i) + " min ago: " + value + " executions";
      });
    });
  }
});
