/* Checkout and order confirmation. At checkout, Huizhou addresses pick a district from the list
   and other cities type one. On the confirmation page, payment is confirmed by Stripe's webhook:
   the page looks again every 2 s and reloads once it has landed (without script, a <noscript>
   refresh does the same). */
(function () {
  "use strict";

  var POLL_MS = 2000;

  function districtByCity(form) {
    var city = form.querySelector("#city");
    var select = form.querySelector("#district");
    var other = form.querySelector("#district_other");
    var huizhouName = form.getAttribute("data-huizhou");
    if (!city || !select || !other || huizhouName === null) { return; }
    city.addEventListener("input", function () {
      var huizhou = city.value.trim() === huizhouName;
      select.hidden = select.disabled = !huizhou;
      other.hidden = other.disabled = huizhou;
    });
  }

  function awaitPayment(panel) {
    var url = panel.getAttribute("data-order-url");
    function check() {
      fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (order) {
          if (order && order.status !== "awaiting_payment") { window.location.reload(); }
          else { window.setTimeout(check, POLL_MS); }
        })
        .catch(function () { window.setTimeout(check, POLL_MS); });
    }
    window.setTimeout(check, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-huizhou]").forEach(districtByCity);
    document.querySelectorAll("[data-awaiting-payment]").forEach(awaitPayment);
  });
})();
