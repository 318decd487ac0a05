// The sign-in page: trades the token for a session cookie (POST /api/v1/auth/session; the cookie
// is HttpOnly, this script never sees it), then goes back to the page that sent it here.
"use strict";

/** `?next=` when it is a path of this site; anything else (`//evil`, `https:...`) goes to `/`. */
function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return /^\/(?![/\\])/.test(next) ? next : "/";
}

function showError(text) {
  const node = document.getElementById("signin-error");
  node.textContent = text;
  node.hidden = !text;
}

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = document.getElementById("signin-submit");
  button.disabled = true;
  showError("");
  try {
    const res = await fetch("/api/v1/auth/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: document.getElementById("token").value.trim() }),
    });
    if (res.ok) {
      location.replace(nextPath());
      return;
    }
    showError(res.status === 401 || res.status === 422 ? "That token is not valid (unknown or revoked)." : `HTTP ${res.status}`);
  } catch (err) {
    showError(`The service does not answer: ${err.message || err}`);
  }
  button.disabled = false;
});
