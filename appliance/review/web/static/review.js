// Keyboard shortcuts for the rating form; the form works without this file (a plain POST).
// 1, 2, 3: prefer A, tie, B. Enter (outside the comment box): submit.
(function () {
  "use strict";
  var form = document.getElementById("rating");
  if (!form) { return; }
  var prefs = { "1": "pref_A", "2": "pref_tie", "3": "pref_B" };
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "radio"))) { return; }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (prefs[ev.key]) {
      var r = document.getElementById(prefs[ev.key]);
      r.checked = true;
      r.focus();
      ev.preventDefault();
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      if (form.reportValidity()) { form.requestSubmit(); }
    }
  });
}());
