// The template editor's live preview: as the operator types, the form (with
// its CSRF token) is posted to the preview action and the answer shown
// beside the editor. Without script the Preview button does the same.
(function () {
  "use strict";
  var form = document.getElementById("template-form");
  if (!form || !form.dataset.preview) return;
  var timer;
  function show(id, text) {
    document.getElementById(id).textContent = text;
  }
  function update() {
    var data = new URLSearchParams(new FormData(form));
    data.set("format", "json");
    fetch(form.dataset.preview, { method: "POST", body: data, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (p) {
        show("preview-error", p.error || "");
        if (p.error) return;
        show("preview-subject", p.subject);
        show("preview-text", p.text);
        document.getElementById("preview-html").srcdoc = p.html;
      })
      .catch(function (e) { show("preview-error", String(e)); });
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 400);
  });
})();
