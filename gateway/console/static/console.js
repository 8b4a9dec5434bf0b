// The console's only script: keyboard shortcuts for buttons that declare one (data-key), and a confirmation
// for buttons that change a route (data-confirm). Every page works without it.
"use strict";

function shortcut(event) {
  const parts = [];
  if (event.ctrlKey || event.metaKey) parts.push("ctrl");
  parts.push(event.key === "Enter" ? "enter" : event.key.toLowerCase());
  return parts.join("+");
}

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.repeat) return;
  const key = shortcut(event);
  if (typing(event.target) && !key.startsWith("ctrl+")) return;
  const button = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!button) return;
  event.preventDefault();
  button.click();
});

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
  if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
});
