/* qcompute console: live task output. The server pushes it as server-sent events
   (GET /console/tasks/<uuid>/events): "stdout"/"stderr" (a JSON string to append), "state"
   (the task changed) or "tick" (a few quiet seconds passed: fresh telemetry), on which htmx
   reloads #task-status, and "end" (the task is over: close). The
   browser's EventSource resumes from the last event id if the connection drops. */
(function () {
  "use strict";

  function follow(box) {
    var source = new EventSource(box.getAttribute("data-events"));
    var live = box.querySelector(".live");
    function append(stream) {
      return function (event) {
        var pane = box.querySelector('pre[data-stream="' + stream + '"]');
        var atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
        pane.textContent += JSON.parse(event.data);
        if (atEnd) { pane.scrollTop = pane.scrollHeight; }
      };
    }
    source.addEventListener("stdout", append("stdout"));
    source.addEventListener("stderr", append("stderr"));
    source.addEventListener("tick", refresh);
    source.addEventListener("state", refresh);
    function refresh() {
      if (window.htmx) { window.htmx.trigger("#task-status", "refresh"); }
    }
    source.addEventListener("end", function () {
      source.close();
      box.setAttribute("data-ended", "true");
      if (live) { live.setAttribute("data-live", "off"); live.textContent = "ended"; }
      if (window.htmx) { window.htmx.trigger("#task-status", "refresh"); }
    });
    source.addEventListener("open", function () {
      if (live) { live.setAttribute("data-live", "on"); live.textContent = "live"; }
    });
  }

  /* A form with data-confirm asks before it is sent (removing a user, rotating a token). */
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-events]"), follow);
  });
})();
