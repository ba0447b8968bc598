// Web Workers for pages opened from disk. Browsers refuse `new Worker(url)` on file:// pages,
// which stops the theme's search. Opened from disk, this script replaces Worker with a small
// stand-in: the worker script runs in a hidden iframe of the same page (an about:blank frame
// shares the page's origin), and messages pass between the two windows as MessageEvents.
// Over http(s) it does nothing. Loaded before the theme's bundle (mkdocs.yml, extra.polyfills).
(function () {
  "use strict";
  if (window.location.protocol !== "file:") {
    return;
  }

  class FrameWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this._pending = [];
      this._ready = false;
      const frame = document.createElement("iframe");
      frame.setAttribute("aria-hidden", "true");
      frame.setAttribute("tabindex", "-1");
      frame.style.display = "none";
      (document.body || document.documentElement).appendChild(frame);
      this._frame = frame;
      const scope = frame.contentWindow;
      const worker = this;
      // The worker's side: postMessage() answers this page, importScripts() is not offered
      // (the English search index needs none).
      scope.postMessage = function (data) {
        window.setTimeout(function () {
          worker._deliver(data);
        }, 0);
      };
      scope.importScripts = function () {
        throw new Error("importScripts is not available to a worker of a page opened from disk");
      };
      const script = scope.document.createElement("script");
      script.src = new URL(url, window.location.href).href;
      script.onload = function () {
        worker._ready = true;
        for (const data of worker._pending.splice(0)) {
          worker._send(data);
        }
      };
      script.onerror = function () {
        const event = new ErrorEvent("error", { message: "cannot load worker script " + url });
        worker.dispatchEvent(event);
        if (typeof worker.onerror === "function") {
          worker.onerror(event);
        }
      };
      scope.document.head.appendChild(script);
    }

    postMessage(data) {
      if (this._ready) {
        this._send(data);
      } else {
        this._pending.push(data);
      }
    }

    terminate() {
      this._frame.remove();
    }

    _send(data) {
      const scope = this._frame.contentWindow;
      scope.dispatchEvent(new scope.MessageEvent("message", { data: data }));
    }

    _deliver(data) {
      const event = new MessageEvent("message", { data: data });
      this.dispatchEvent(event);
      if (typeof this.onmessage === "function") {
        this.onmessage(event);
      }
    }
  }

  window.Worker = FrameWorker;
})();
