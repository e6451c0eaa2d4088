/* On every page: forms marked data-confirm ask before they are sent, and selects marked
   data-autosubmit send their form when changed. Without this script the forms still work:
   they are sent without asking, and filters have their own button. */
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) { return; }
    if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
  });

  document.addEventListener("change", function (event) {
    var field = event.target;
    if (!(field instanceof HTMLSelectElement) || !field.hasAttribute("data-autosubmit")) { return; }
    if (field.form) { field.form.submit(); }
  });
})();
