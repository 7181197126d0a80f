"""The try-it page's files (index.html, app.js, app.css), served by protocols/demo.py."""
