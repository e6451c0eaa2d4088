"""Flask extensions, created unbound and initialised in the application factory."""

from flask_babel import Babel
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect

from shop.db import Base

# Objects stay readable after commit: a request answers from what it just wrote instead of
# reloading it; reads that decide something (row locks) ask for fresh rows explicitly.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
csrf = CSRFProtect()
babel = Babel()
login_manager = LoginManager()
