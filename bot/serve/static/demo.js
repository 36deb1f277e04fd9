/* The demo page's widget set-up, in a file of its own: the page's Content-Security-Policy
 * runs no inline script. A host page with a strict CSP does the same with a script of its own. */
BotWidget.init({server: "", title: "Kestrel Mobile", greeting: "Hi, I'm Wren. How can I help?", colors: {primary: "#0b5fff"}});

/* Which model answers: until a trained model is served, say so (GET /health, every 30 s). */
async function showStage() {
  const note = document.getElementById("model-stage");
  try {
    const { model } = await (await fetch("/health")).json();
    note.hidden = model.trained;
    note.textContent = model.trained ? "" : "Not fine-tuned yet, answering with: " + model.description + ". Replies get better once a fine-tuned model takes over.";
    if (!model.trained) setTimeout(showStage, 30000);
  } catch (error) {
    setTimeout(showStage, 30000);
  }
}
showStage();
