// The JSON editor of the config store's admin: every textarea[data-json-editor] is checked
// as the user types (JSON.parse; the error shown inline with its line and column), and gets
// a Format button. The server checks again on save; this only saves a round trip.
"use strict";

(function () {
    function lineAndColumn(text, position) {
        const before = text.slice(0, position).split("\n");
        return "line " + before.length + ", column " + (before[before.length - 1].length + 1);
    }

    function describeError(text, error) {
        const message = String(error && error.message ? error.message : error);
        if (/line \d+/.test(message)) {
            return message;
        }
        const found = /position (\d+)/.exec(message);
        return found ? message + " (" + lineAndColumn(text, Number(found[1])) + ")" : message;
    }

    function describeValue(value) {
        if (value === null) return "null";
        if (Array.isArray(value)) return "an array of " + value.length + " item" + (value.length === 1 ? "" : "s");
        if (typeof value === "object") {
            const n = Object.keys(value).length;
            return "an object with " + n + " key" + (n === 1 ? "" : "s");
        }
        return "a " + typeof value;
    }

    // Re-indents valid JSON by its tokens, keeping every string and number exactly as
    // written (JSON.stringify would round integers beyond 2^53).
    function reindent(text) {
        const tokens = text.match(/"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+/g) || [];
        let out = "";
        let depth = 0;
        const newline = () => "\n" + "  ".repeat(depth);
        for (let i = 0; i < tokens.length; i++) {
            const token = tokens[i];
            if (token === "{" || token === "[") {
                const close = token === "{" ? "}" : "]";
                if (tokens[i + 1] === close) {
                    out += token + close;
                    i++;
                    continue;
                }
                depth++;
                out += token + newline();
            } else if (token === "}" || token === "]") {
                depth--;
                out += newline() + token;
            } else if (token === ",") {
                out += "," + newline();
            } else if (token === ":") {
                out += ": ";
            } else {
                out += token;
            }
        }
        return out;
    }

    function attach(textarea) {
        const toolbar = document.createElement("div");
        toolbar.className = "cs-json-toolbar";
        const status = document.createElement("span");
        status.className = "cs-json-status";
        status.id = textarea.id + "_status";
        status.setAttribute("aria-live", "polite");
        const format = document.createElement("button");
        format.type = "button";
        format.className = "button cs-json-format";
        format.textContent = "Format";
        toolbar.append(format, status);
        // The textarea and its toolbar share the field's column, beside the label.
        const column = document.createElement("div");
        column.className = "cs-json-column";
        textarea.insertAdjacentElement("beforebegin", column);
        column.append(textarea, toolbar);
        textarea.setAttribute("aria-describedby", status.id);

        function check() {
            const text = textarea.value;
            let ok = false;
            let parsed;
            if (!text.trim()) {
                status.textContent = "Enter a JSON value.";
            } else {
                try {
                    parsed = JSON.parse(text);
                    ok = true;
                    status.textContent = "Valid JSON: " + describeValue(parsed) + ".";
                } catch (error) {
                    status.textContent = "Invalid JSON: " + describeError(text, error);
                }
            }
            status.classList.toggle("cs-json-ok", ok);
            status.classList.toggle("cs-json-error", !ok);
            textarea.classList.toggle("cs-invalid", !ok);
            textarea.setAttribute("aria-invalid", ok ? "false" : "true");
            format.disabled = !ok;
            return ok ? { value: parsed } : null;
        }

        format.addEventListener("click", function () {
            if (check()) {
                textarea.value = reindent(textarea.value);
                check();
            }
        });
        textarea.addEventListener("input", check);
        check();
    }

    function start() {
        document.querySelectorAll("textarea[data-json-editor]").forEach(attach);
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
})();
