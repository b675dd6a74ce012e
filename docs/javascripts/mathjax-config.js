// MathJax 3 configuration for pymdownx.arithmatex in generic mode: arithmatex
// wraps each formula in an element of class "arithmatex" with \( \) or \[ \]
// delimiters; MathJax typesets those elements and nothing else on the page,
// except the navigation's entries ("md-ellipsis"), where a heading's formula
// arrives as plain \( \) text.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|md-ellipsis",
  },
};
