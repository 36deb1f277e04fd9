/* The demo page's widget set-up, in a file of its own: the page's Content-Security-Policy
 * runs no inline script. A host page with a strict CSP does the same with a script of its own. */
BotWidget.init({server: "", title: "Kestrel Mobile", greeting: "Hi, I'm Wren. How can I help?", colors: {primary: "#0b5fff"}});
