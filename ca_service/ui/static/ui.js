// Optional conveniences only: every page works without this file (JavaScript off).
// A "Copy" button after each value marked data-copy (a new token's secret, a serial).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-copy]").forEach(function (el) {
    if (!navigator.clipboard) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy " + (el.getAttribute("data-copy") || "value"));
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(el.textContent.trim()).then(function () {
        button.textContent = "Copied";
      });
    });
    el.insertAdjacentElement("afterend", button);
  });
});
