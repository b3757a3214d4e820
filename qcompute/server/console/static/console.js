/* qcompute console: uploads, confirmations, and live task output.

   An upload form (data-stream-upload) sends the file itself as the body of a PUT
   (?prefix=&name=), with the CSRF token in X-CSRF-Token, so the server streams it to S3 as
   it arrives; without script the form posts multipart/form-data instead.

   Live task output: the server pushes it as server-sent events
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

  function upload(form, event) {
    var file = form.querySelector("input[type=file]").files[0];
    if (!file || !window.fetch) { return; }  // the browser's own checks, or the plain form
    event.preventDefault();
    var state = form.querySelector(".upload-state");
    var button = form.querySelector("button[type=submit]");
    var query = new URLSearchParams({prefix: form.elements.prefix.value, name: file.name});
    button.disabled = true;
    state.textContent = "uploading " + file.name + "…";
    fetch(form.getAttribute("action") + "?" + query.toString(), {
      method: "PUT", body: file, credentials: "same-origin",
      headers: {"X-CSRF-Token": form.elements.csrf_token.value, "HX-Request": "true",
                "Content-Type": file.type || "application/octet-stream"}
    }).then(function (response) {
      if (response.ok) {
        return response.json().then(function (done) { window.location.assign(done.listing); });
      }
      return response.text().then(function (html) {  // the server's message, for #flash
        document.getElementById("flash").innerHTML = html;
        state.textContent = "";
        button.disabled = false;
      });
    }).catch(function (error) {
      state.textContent = "the upload failed: " + error.message;
      button.disabled = false;
    });
  }

  document.addEventListener("submit", function (event) {
    if (event.target.hasAttribute && event.target.hasAttribute("data-stream-upload")) {
      upload(event.target, event);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-events]"), follow);
  });
})();
