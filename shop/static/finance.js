/* Finance pages: export buttons start the job through the JSON API and poll it until the file
   is ready. Without this script the forms still work: an export posts to a page that refreshes
   until its file is ready. */
(function () {
  "use strict";

  var POLL_MS = 1000;

  function text(panel, name, rows) {
    var value = panel.getAttribute("data-text-" + name) || "";
    return rows === undefined ? value : value.replace("{rows}", String(rows));
  }

  function errorMessage(body, fallback) {
    return (body && body.error && body.error.message) || fallback;
  }

  function readJson(response) {
    return response.json().then(
      function (body) { return {ok: response.ok, body: body}; },
      function () { return {ok: response.ok, body: null}; }
    );
  }

  function jobItem(panel, label) {
    var item = document.createElement("li");
    var name = document.createElement("span");
    var progress = document.createElement("progress");
    var state = document.createElement("span");
    name.className = "job-name";
    name.textContent = label;
    progress.setAttribute("aria-label", label);
    state.className = "job-status";
    state.textContent = text(panel, "queued");
    item.appendChild(name);
    item.appendChild(progress);
    item.appendChild(state);
    item.setAttribute("data-export-job", "");
    panel.querySelector("[data-export-jobs]").prepend(item);
    return {item: item, progress: progress, state: state};
  }

  function finish(panel, job, status, body) {
    job.progress.remove();
    job.item.setAttribute("data-status", status);
    if (status === "done") {
      job.state.className = "job-status job-done";
      job.state.textContent = text(panel, "done") +
        (body.rows != null ? " · " + text(panel, "rows", body.rows) : "");
      var link = document.createElement("a");
      link.className = "button primary small";
      link.href = body.download_url;
      link.setAttribute("download", "");
      link.textContent = text(panel, "download");
      job.item.appendChild(link);
      link.focus();
    } else {
      job.state.className = "job-status job-failed";
      job.state.textContent = errorMessage(body, text(panel, "failed"));
    }
  }

  function poll(panel, job, url) {
    fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(readJson)
      .then(function (result) {
        var body = result.body || {};
        if (!result.ok) {
          finish(panel, job, "failed", body);
          return;
        }
        if (body.status === "done" || body.status === "failed") {
          finish(panel, job, body.status, body);
          return;
        }
        job.state.textContent = text(panel, body.status === "running" ? "running" : "queued") +
          (body.rows ? " · " + text(panel, "rows", body.rows) : "");
        window.setTimeout(function () { poll(panel, job, url); }, POLL_MS);
      })
      .catch(function () { window.setTimeout(function () { poll(panel, job, url); }, POLL_MS * 3); });
  }

  function startExport(panel, form) {
    var data = new FormData(form);
    var button = form.querySelector("button");
    var job = jobItem(panel, button.textContent.trim());
    var payload = {
      report: data.get("report"),
      format: data.get("format"),
      from: data.get("from"),
      to: data.get("to")
    };
    if (data.get("group_by")) { payload.group_by = data.get("group_by"); }
    button.disabled = true;
    fetch(panel.getAttribute("data-api"), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": data.get("csrf_token")
      },
      body: JSON.stringify(payload)
    })
      .then(readJson)
      .then(function (result) {
        button.disabled = false;
        if (!result.ok || !result.body || !result.body.id) {
          finish(panel, job, "failed", result.body || {error: {message: text(panel, "error")}});
          return;
        }
        var url = result.body.url || panel.getAttribute("data-api") + "/" + result.body.id;
        poll(panel, job, url);
      })
      .catch(function () {
        button.disabled = false;
        finish(panel, job, "failed", {error: {message: text(panel, "error")}});
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-export-panel]").forEach(function (panel) {
      if (!window.fetch || !window.FormData) { return; }
      panel.addEventListener("submit", function (event) {
        var form = event.target.closest("form[data-export]");
        if (!form) { return; }
        event.preventDefault();
        startExport(panel, form);
      });
    });
  });
})();
