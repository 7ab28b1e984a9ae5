// rotator dashboard: grace countdowns and the typed confirmation. No third-party code; the
// page works without it (the server checks the confirmation itself).
"use strict";

function human(seconds) {
  const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  const parts = [];
  for (const [unit, size] of units) {
    if (seconds >= size || (unit === "s" && parts.length === 0)) {
      parts.push(Math.floor(seconds / size) + unit);
      seconds %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

function tick() {
  for (const el of document.querySelectorAll(".countdown[data-expires]")) {
    const left = Math.floor((Date.parse(el.dataset.expires) - Date.now()) / 1000);
    el.textContent = left > 0 ? human(left) : "ended";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.querySelector(".countdown[data-expires]")) {
    tick();
    setInterval(tick, 1000);
  }
  const confirm = document.getElementById("confirm");
  const button = document.getElementById("emergency-rotate");
  if (confirm && button) {
    const update = () => { button.disabled = confirm.value !== confirm.dataset.name; };
    confirm.addEventListener("input", update);
    update();
  }
});
