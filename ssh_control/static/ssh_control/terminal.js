// The admin's web terminal: xterm.js on the instance's terminal WebSocket.
(function () {
  "use strict";
  const status = document.getElementById("terminal-status");
  const path = JSON.parse(document.getElementById("terminal-socket-path").textContent);
  const storageKey = "claworc-terminal:" + path;
  const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
  const fitAddon = new FitAddon.FitAddon();
  term.loadAddon(fitAddon);
  term.open(document.getElementById("terminal"));
  const encoder = new TextEncoder();

  function fit() {
    fitAddon.fit();
  }
  fit();

  const query = new URLSearchParams({ cols: term.cols, rows: term.rows });
  const previous = sessionStorage.getItem(storageKey);
  if (previous) query.set("session_id", previous);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + path + "?" + query.toString());
  socket.binaryType = "arraybuffer";

  socket.onmessage = function (event) {
    if (typeof event.data !== "string") {
      term.write(new Uint8Array(event.data));
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "session_info") {
      sessionStorage.setItem(storageKey, message.session_id);
      status.textContent = (message.resumed ? "resumed" : "started") + " session " +
        message.session_id.slice(0, 8);
    } else if (message.type === "session_end") {
      sessionStorage.removeItem(storageKey);
      status.textContent = "session ended: " + message.reason;
    } else if (message.type === "error") {
      if (message.code === "terminal_session_not_found") sessionStorage.removeItem(storageKey);
      status.textContent = "error: " + message.error;
    }
  };
  socket.onclose = function (event) {
    if (!status.textContent.startsWith("session ended")) {
      status.textContent += " (disconnected, code " + event.code + ")";
    }
  };
  term.onData(function (data) {
    if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  });
  term.onResize(function (size) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
    }
  });
  window.addEventListener("resize", fit);
  term.focus();
})();
