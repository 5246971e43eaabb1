// Keyboard play on the Play tab: a key press clicks the matching action button, so keys and clicks run
// the same callback. Ignored while typing in a field, with modifier keys, and when the Play tab is hidden.
(function () {
    var KEYS = {
        ArrowLeft: "play-action-left",
        ArrowRight: "play-action-right",
        ArrowUp: "play-action-forward",
        p: "play-action-pickup",
        d: "play-action-drop",
        t: "play-action-toggle"
    };
    function typing(el) {
        if (!el) { return false; }
        var tag = (el.tagName || "").toLowerCase();
        return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable;
    }
    document.addEventListener("keydown", function (ev) {
        if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) { return; }
        var id = KEYS[ev.key] || KEYS[(ev.key || "").toLowerCase()];
        if (!id) { return; }
        var panel = document.getElementById("panel-play");
        var button = document.getElementById(id);
        if (!panel || panel.style.display === "none" || !button || getComputedStyle(button).display === "none") { return; }
        ev.preventDefault();
        button.click();
    });
})();
