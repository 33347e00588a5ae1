// HAD-MC dashboard: live job progress and confirmations. Pages work without it.
"use strict";

function pollJob(section) {
  const url = section.dataset.jobLive;
  const set = (name, value) => {
    document.querySelectorAll('[data-field="' + name + '"]').forEach((el) => {
      el.textContent = value;
    });
  };
  const tick = async () => {
    let job;
    try {
      const resp = await fetch(url, {headers: {Accept: "application/json"}, cache: "no-store"});
      if (resp.redirected || !resp.ok ||
          !(resp.headers.get("content-type") || "").startsWith("application/json")) {
        window.location.reload();  // the session ended, or the job is gone: show why
        return;
      }
      job = await resp.json();
    } catch (e) {
      window.setTimeout(tick, 3000);  // the server restarts: try again
      return;
    }
    if (["succeeded", "failed", "cancelled"].includes(job.state)) {
      window.location.reload();  // the finished page: result, error, stage times
      return;
    }
    const badge = document.querySelector('[data-field="state"] .badge');
    if (badge) {
      badge.textContent = job.state;
      badge.className = "badge s-" + job.state;
    }
    set("stage", job.stage || "—");
    set("done", job.done);
    set("total", job.total);
    set("percent", job.percent === null ? "–" : job.percent);
    set("log_tail", job.log_tail || "(nothing yet)");
    document.querySelectorAll('[data-field="bar"]').forEach((el) => {
      el.setAttribute("width", job.percent || 0);
    });
    window.setTimeout(tick, 1000);
  };
  window.setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-job-live]").forEach((el) => {
    if (el.dataset.jobLive) pollJob(el);
  });
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});
